// httpget URL: GET with net/http (static, CGO off: Go's own resolver reads
// /etc/resolv.conf and /etc/hosts itself). Prints the body, then "peer=<remote addr>".
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
)

func main() {
	var peer string
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			peer = c.RemoteAddr().String()
		}
		return c, err
	}}
	resp, err := (&http.Client{Transport: tr}).Get(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	body, _ := io.ReadAll(resp.Body)
	fmt.Printf("%s\npeer=%s\n", body, peer)
}
