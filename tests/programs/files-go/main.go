// files-go FILE DIR: a static Go program reading a file (os.ReadFile: openat, fstat, read)
// and walking a tree (filepath.Walk: lstat, getdents64). Prints the file's sha256 and
// size, then one line per walked entry: "path mode size".
package main

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
)

func main() {
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Println("readfile error:", err)
		os.Exit(1)
	}
	fmt.Printf("sha256 %x size %d\n", sha256.Sum256(data), len(data))
	err = filepath.Walk(os.Args[2], func(path string, info os.FileInfo, err error) error {
		if err != nil {
			fmt.Println("walk error:", err)
			return nil
		}
		fmt.Printf("%s %s %d\n", path, info.Mode(), info.Size())
		return nil
	})
	if err != nil {
		fmt.Println("walk error:", err)
		os.Exit(1)
	}
}
