// Command kmsload runs concurrent clients against a key service for a fixed
// time and prints one line of figures (see internal/kmsload). Used by
// scripts/kms-load.sh.
//
//	go run ./scripts/kmsload --url https://127.0.0.1:8443 --ca ca.pem \
//	    --admin-token TOKEN --clients 200 --duration 60s --pids 1234,1235
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/veil-tee/veil/internal/kmsload"
)

func main() {
	var c kmsload.Config
	var ca, pids string
	flag.StringVar(&c.URL, "url", os.Getenv("VEIL_KMS_URL"), "key service address(es), comma-separated")
	flag.StringVar(&ca, "ca", os.Getenv("VEIL_KMS_CA"), "CA certificate (PEM) of the server")
	flag.StringVar(&c.AdminToken, "admin-token", os.Getenv("VEIL_ADMIN_TOKEN"), "admin token (to enroll the load's app)")
	flag.IntVar(&c.Clients, "clients", 32, "concurrent clients")
	flag.DurationVar(&c.Duration, "duration", 10*time.Second, "how long to run")
	flag.IntVar(&c.MixCreate, "create-percent", 0, "share of key creations among the operations, in percent")
	flag.BoolVar(&c.Lean, "lean", false, "send unwraps over raw HTTP/1.1 on each client's TLS connection instead of through kms/client (a lighter client)")
	flag.Float64Var(&c.Rate, "rate", 0, "open loop: operations per second offered by all clients together (latency counted from when each was due); 0: closed loop")
	flag.StringVar(&pids, "pids", "", "server process ids whose CPU time counts, comma-separated")
	flag.Parse()
	b, err := os.ReadFile(ca)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kmsload: error: reading --ca: %v\n", err)
		os.Exit(2)
	}
	c.CAPEM = b
	for _, p := range strings.Split(pids, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(p)); err == nil {
			c.ServerPIDs = append(c.ServerPIDs, n)
		}
	}
	r, err := kmsload.Run(context.Background(), c)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kmsload: error: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("clients %d: %s\n", c.Clients, r)
	if r.Errors > 0 {
		fmt.Printf("first error: %s\n", r.FirstError)
		os.Exit(1)
	}
}
