package kmsload

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/veil-tee/veil/kms/api"
)

// leanClient unwraps one data key over one TLS connection, writing the
// signed HTTP/1.1 request itself and reading the answer with
// http.ReadResponse. It verifies the server's certificate against the CA
// like kms/client, signs every request with a fresh nonce, and checks that
// the answer is 200 with the expected plaintext.
type leanClient struct {
	addr, host string
	tc         *tls.Config
	conn       net.Conn
	br         *bufio.Reader
	app        string
	signKey    []byte
	body, want []byte
	buf        []byte
}

func dialLean(base string, caPEM []byte, app, apiKey string, ct, pt []byte) (*leanClient, error) {
	u, err := url.Parse(base)
	// Plain http:// is accepted only for the transport benchmark's
	// floor without TLS (a key service serves TLS only).
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, fmt.Errorf("the URL must be https://HOST:PORT, got %q", base)
	}
	body, err := json.Marshal(api.DecryptRequest{Ciphertext: ct})
	if err != nil {
		return nil, err
	}
	c := &leanClient{addr: u.Host, host: u.Host, app: app, signKey: api.SigningKey(apiKey), body: body, want: pt}
	if u.Scheme == "https" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("the CA holds no PEM certificate")
		}
		c.tc = &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: u.Hostname()}
	}
	return c, c.dial()
}

func (c *leanClient) dial() error {
	var conn net.Conn
	var err error
	if c.tc != nil {
		conn, err = tls.Dial("tcp", c.addr, c.tc)
	} else {
		conn, err = net.Dial("tcp", c.addr)
	}
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", c.addr, err)
	}
	c.conn, c.br = conn, bufio.NewReaderSize(conn, 8<<10)
	return nil
}

func (c *leanClient) close() {
	if c.conn != nil {
		c.conn.Close()
	}
}

// decrypt sends one signed unwrap and checks the answer; after a failure
// of the connection it connects again for the next one.
func (c *leanClient) decrypt() error {
	if c.conn == nil {
		if err := c.dial(); err != nil {
			return err
		}
	}
	err := c.roundTrip()
	if err != nil {
		var se *statusError
		if !errors.As(err, &se) {
			c.conn.Close()
			c.conn = nil
		}
	}
	return err
}

type statusError struct {
	status int
	body   string
}

func (e *statusError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.status, e.body) }

func (c *leanClient) roundTrip() error {
	var nb [18]byte
	rand.Read(nb[:])
	nonce := base64.RawURLEncoding.EncodeToString(nb[:])
	ts := time.Now().Unix()
	sig := api.Sign(c.signKey, "POST", "/v1/decrypt", ts, nonce, c.body)
	b := c.buf[:0]
	b = append(b, "POST /v1/decrypt HTTP/1.1\r\nHost: "...)
	b = append(b, c.host...)
	b = append(b, "\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(c.body)), 10)
	b = append(b, "\r\n"+api.HeaderAppID+": "...)
	b = append(b, c.app...)
	b = append(b, "\r\n"+api.HeaderTimestamp+": "...)
	b = strconv.AppendInt(b, ts, 10)
	b = append(b, "\r\n"+api.HeaderNonce+": "...)
	b = append(b, nonce...)
	b = append(b, "\r\n"+api.HeaderSignature+": "...)
	b = append(b, sig...)
	b = append(b, "\r\n\r\n"...)
	b = append(b, c.body...)
	c.buf = b
	if _, err := c.conn.Write(b); err != nil {
		return fmt.Errorf("sending: %w", err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	out, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return &statusError{resp.StatusCode, string(bytes.TrimSpace(out))}
	}
	var dr api.DecryptResponse
	if err := json.Unmarshal(out, &dr); err != nil {
		return fmt.Errorf("decoding the answer: %w", err)
	}
	if !bytes.Equal(dr.Plaintext, c.want) {
		return errors.New("the answer's plaintext is not the data key")
	}
	return nil
}
