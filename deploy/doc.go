// Package deploy holds strait's Kubernetes manifests, and no code: its
// tests check them. strait.yaml is the Namespace, RBAC, the gateway's
// Deployment and the node agent's DaemonSet; crds/ are copies of the
// CustomResourceDefinitions the code embeds (strait.io from
// discovery/kubepolicy, ServiceExport and ServiceImport from
// sigs.k8s.io/mcs-api), kept equal to them by TestCRDCopies. See
// README.md.
package deploy
