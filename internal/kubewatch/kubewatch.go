// Package kubewatch holds what strait's informer sources share about
// their watches.
package kubewatch

import (
	"context"
	"errors"
	"io"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// Routine reports whether a list-and-watch error is part of an informer's
// normal life, not worth a log line: the context ended, the connection
// closed, or the resource version expired; the informer relists, as it
// should.
func Routine(ctx context.Context, err error) bool {
	return ctx.Err() != nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		apierrors.IsResourceExpired(err) || apierrors.IsGone(err)
}
