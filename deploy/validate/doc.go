// Package validate checks veil's Kubernetes deployment files against a real
// API server: the Helm chart deploy/helm/veil-kms rendered with Helm's Go
// SDK for several value sets, and the manifests in deploy/k8s, each object
// sent with server-side dry-run and strict field validation to a
// kube-apiserver (over etcd) that the test starts on loopback.
//
// It is a module of its own so that Helm's SDK and its Kubernetes
// dependencies (about 170 modules) stay out of veil's go.mod: veil itself
// never imports them.
package validate
