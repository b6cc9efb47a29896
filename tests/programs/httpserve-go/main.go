// httpserve ADDR: a net/http server (static, CGO off) answering "local" to every request.
// Per request it prints "REQ <method> <path> <x-user> peer=<remote addr> local=<local addr>"
// so tests can see what reached it and which addresses accept/getsockname gave.
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
)

func main() {
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	fmt.Printf("LISTENING %s\n", ln.Addr())
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		local := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		user := r.Header.Get("x-user")
		if user == "" {
			user = "-"
		}
		fmt.Printf("REQ %s %s %s peer=%s local=%s\n", r.Method, r.URL.Path, user, r.RemoteAddr, local)
		w.Header().Set("Content-Length", "5")
		w.Write([]byte("local"))
	})
	if err := http.Serve(ln, h); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
