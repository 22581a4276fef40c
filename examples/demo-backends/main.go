// Command demo-backends runs the servers behind examples/bootstrap.yaml, each
// of which tells the client which backend it reached:
//
//	127.0.0.1:10081  HTTP/1.1
//	127.0.0.1:10082  HTTP/2 cleartext (prior knowledge)
//	127.0.0.1:10083  HTTPS (a self-signed certificate made at start)
//	127.0.0.1:10084  a server-speaks-first TCP service that greets like SMTP
package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/net/http2"
)

func main() {
	host := flag.String("host", "127.0.0.1", "address to bind")
	base := flag.Int("base-port", 10081, "first of five consecutive ports")
	flag.Parse()

	addr := func(i int) string { return net.JoinHostPort(*host, fmt.Sprint(*base+i)) }
	hello := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from the %s backend: %s %s over %s\n", name, r.Method, r.URL.Path, r.Proto)
		}
	}

	go serve(addr(0), func(ln net.Listener) error { return http.Serve(ln, hello("HTTP/1.1")) })
	go serve(addr(1), func(ln net.Listener) error {
		h2 := &http2.Server{}
		for {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			go h2.ServeConn(c, &http2.ServeConnOpts{Handler: hello("h2c")})
		}
	})
	go serve(addr(2), func(ln net.Listener) error {
		cert, err := selfSigned()
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: hello("TLS"), TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
		return srv.ServeTLS(ln, "", "")
	})
	go serve(addr(3), func(ln net.Listener) error {
		for {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "220 opaque backend ready: the server spoke first (%s)\r\n", time.Now().Format(time.TimeOnly))
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					fmt.Fprintf(c, "250 got %d bytes\r\n", n)
				}
			}()
		}
	})
	go serve(addr(4), func(ln net.Listener) error {
		for {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			go serveRESP(c)
		}
	})
	log.Printf("demo backends on %s..%s", addr(0), addr(4))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}

func serve(addr string, f func(net.Listener) error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("demo-backends: %v", err)
	}
	log.Fatalf("demo-backends: %s: %v", addr, f(ln))
}

func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// serveRESP answers Redis clients (RESP arrays of bulk strings, as redis-cli
// sends them): PING with PONG, anything else with a line naming the command.
func serveRESP(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		args, err := readRESPArray(r)
		if err != nil || len(args) == 0 {
			return
		}
		cmd := strings.ToUpper(args[0])
		switch cmd {
		case "PING":
			fmt.Fprint(c, "+PONG\r\n")
		case "COMMAND": // redis-cli asks for the command table in interactive mode
			fmt.Fprint(c, "*0\r\n")
		default:
			msg := fmt.Sprintf("hello from the Redis demo backend: %s", strings.Join(args, " "))
			fmt.Fprintf(c, "$%d\r\n%s\r\n", len(msg), msg)
		}
	}
}

// readRESPArray reads "*<n>\r\n" and n bulk strings "$<len>\r\n<bytes>\r\n".
func readRESPArray(r *bufio.Reader) ([]string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "*")))
	if err != nil || !strings.HasPrefix(line, "*") || n < 0 || n > 1024 {
		return nil, fmt.Errorf("not a RESP array: %q", line)
	}
	args := make([]string, 0, n)
	for range n {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, err
		}
		size, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "$")))
		if err != nil || !strings.HasPrefix(line, "$") || size < 0 || size > 1<<20 {
			return nil, fmt.Errorf("not a RESP bulk string: %q", line)
		}
		buf := make([]byte, size+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		args = append(args, string(buf[:size]))
	}
	return args, nil
}
