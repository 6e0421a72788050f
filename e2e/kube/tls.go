package kube

import "crypto/tls"

// insecureTLS is for the readiness probe only, before the server's
// self-signed certificate exists on disk; clients use CAFile.
func insecureTLS() *tls.Config { return &tls.Config{InsecureSkipVerify: true} }
