// podview-go PORT COUNT: podview.c in Go (static, CGO off; built with -gcflags=all=-N -l
// so that dlv can step): prints the pod's view, listens on PORT, serves COUNT requests,
// each through handle(). checkpoint() and handle() are the breakpoints of the tests. It
// counts the SIGUSR1 it gets (signal.Notify) and prints "SIGNALS n" at the end.
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

//go:noinline
func checkpoint(step int) int {
	doubled := step * 2
	return doubled
}

func view() {
	fmt.Printf("APP_MODE=%s\n", os.Getenv("APP_MODE"))
	var u syscall.Utsname
	syscall.Uname(&u)
	name := make([]byte, 0, 65)
	for _, c := range u.Nodename {
		if c == 0 {
			break
		}
		name = append(name, byte(c))
	}
	fmt.Printf("HOSTNAME=%s\n", name)
	data, err := os.ReadFile("/srv/app/config.yaml")
	if err != nil {
		fmt.Printf("FILE=(missing)\n")
	} else {
		fmt.Printf("FILE=%s\n", strings.SplitN(string(data), "\n", 2)[0])
	}
	addrs, err := net.LookupHost("svc.pod.internal")
	if err != nil || len(addrs) == 0 {
		fmt.Printf("RESOLVED=error:%v\n", err)
		return
	}
	fmt.Printf("RESOLVED=%s\n", addrs[0])
	resp, err := http.Get("http://svc.pod.internal:8080/")
	if err != nil {
		fmt.Printf("OUTGOING=error:%v\n", err)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Printf("OUTGOING=%s\n", body)
}

//go:noinline
func handle(conn net.Conn) {
	req, _ := bufio.NewReader(conn).ReadString('\n')
	view()
	conn.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nlocal"))
	host, _, _ := net.SplitHostPort(conn.RemoteAddr().String())
	fmt.Printf("SERVED peer=%s bytes=%d\n", host, len(req))
}

func main() {
	port, _ := strconv.Atoi(os.Args[1])
	count, _ := strconv.Atoi(os.Args[2])
	var signals int64
	usr1 := make(chan os.Signal, 64)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for range usr1 {
			atomic.AddInt64(&signals, 1)
		}
	}()
	fmt.Printf("CHECKPOINT=%d\n", checkpoint(1))
	view()
	ln, err := net.Listen("tcp4", fmt.Sprintf(":%d", port))
	if err != nil {
		fmt.Println("listen:", err)
		os.Exit(1)
	}
	fmt.Printf("LISTENING pid=%d\n", os.Getpid())
	for i := 0; i < count; i++ {
		conn, err := ln.Accept()
		if err != nil {
			fmt.Println("accept:", err)
			os.Exit(1)
		}
		handle(conn)
		conn.Close()
	}
	fmt.Printf("SIGNALS %d\n", atomic.LoadInt64(&signals))
}
