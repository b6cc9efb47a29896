// envprint-go: same output as envprint.c, from a statically linked Go binary
// (Go does its own syscalls, no libc: what LD_PRELOAD tools cannot reach).
package main

import (
	"fmt"
	"os"
	"sort"
	"syscall"
)

func main() {
	env := os.Environ()
	sort.Strings(env)
	for _, kv := range env {
		fmt.Println(kv)
	}
	// os.Hostname reads /proc/sys/kernel/hostname, not uname(2) (what the supervisor
	// rewrites): reported on stderr so stdout keeps envprint's exact format.
	if h, err := os.Hostname(); err == nil {
		fmt.Fprintf(os.Stderr, "HOSTNAME_OS=%s\n", h)
	}
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		fmt.Fprintln(os.Stderr, "uname:", err)
		os.Exit(1)
	}
	b := make([]byte, 0, len(u.Nodename))
	for _, c := range u.Nodename {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	fmt.Printf("HOSTNAME_UNAME=%s\n", b)
}
