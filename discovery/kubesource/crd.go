package kubesource

import (
	"context"
	"fmt"

	"k8s.io/client-go/rest"
	mcscrd "sigs.k8s.io/mcs-api/config/crd"

	"github.com/straitnet/strait/internal/kubecrd"
)

// InstallCRDs applies the MCS API's CustomResourceDefinitions (ServiceExport
// and ServiceImport, as released with the mcs-api module strait builds
// with) and waits until the API server serves them, or ctx ends. It is for
// tests and the lab; a production cluster installs the CRDs with its
// manifests.
// The install is kubecrd's: server-side apply, a no-op the second time.
func InstallCRDs(ctx context.Context, cfg *rest.Config) error {
	if err := kubecrd.Install(ctx, cfg, mcscrd.ServiceExportCRD, mcscrd.ServiceImportCRD); err != nil {
		return fmt.Errorf("kubesource: %w", err)
	}
	return nil
}
