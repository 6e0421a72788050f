package nodeagent

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultBPFPinDir is where strait-agent pins its policy maps and
// attachments.
const DefaultBPFPinDir = "/sys/fs/bpf/strait"

const bpffsRoot = "/sys/fs/bpf"

// ensureBPFFS makes sure dir lies on a bpffs, mounting one at /sys/fs/bpf
// if dir is below it and nothing is mounted there yet (as on hosts that do
// not mount it at boot).
func ensureBPFFS(dir string) error {
	if dir == "" {
		return nil
	}
	if onBPFFS(filepath.Dir(dir)) || onBPFFS(dir) {
		return nil
	}
	if !strings.HasPrefix(filepath.Clean(dir)+"/", bpffsRoot+"/") {
		return fmt.Errorf("the pin directory %s is not on a bpffs (mount -t bpf bpf %s)", dir, filepath.Dir(dir))
	}
	if err := os.MkdirAll(bpffsRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("bpf", bpffsRoot, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mounting a bpffs at %s: %w", bpffsRoot, err)
	}
	return nil
}

func onBPFFS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}
