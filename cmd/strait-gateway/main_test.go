package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"os"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/straitnet/strait/gateway"
	"github.com/straitnet/strait/internal/cli"
)

// gatewayEnv is the environment of the gateway container in
// deploy/strait.yaml.
func gatewayEnv(t *testing.T) map[string]string {
	t.Helper()
	data, err := os.ReadFile("../../deploy/strait.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		j, err := utilyaml.ToJSON(doc)
		if err != nil {
			t.Fatal(err)
		}
		var d appsv1.Deployment
		if err := json.Unmarshal(j, &d); err != nil || d.Kind != "Deployment" || d.Name != "strait-gateway" {
			continue
		}
		for _, c := range d.Spec.Template.Spec.Containers {
			if c.Name != "gateway" {
				continue
			}
			env := map[string]string{}
			for _, e := range c.Env {
				env[e.Name] = e.Value
				if e.ValueFrom != nil {
					env[e.Name] = "cloud-a" // the site, or the pod's name or namespace
				}
			}
			return env
		}
	}
	t.Fatal("deploy/strait.yaml has no Deployment strait-gateway with a container gateway")
	return nil
}

// TestDeploymentEnv checks that every STRAIT_ variable the Deployment sets
// is a flag of run, and that the flags take its values.
func TestDeploymentEnv(t *testing.T) {
	env := gatewayEnv(t)
	var (
		o gateway.Options
		f runFlags
	)
	fs := newRunFlags(&o, &f)
	fs.SetOutput(io.Discard)
	flags := map[string]bool{}
	fs.VisitAll(func(fl *flag.Flag) { flags[cli.EnvName(cli.EnvPrefix, fl.Name)] = true })
	for k, v := range env {
		if !strings.HasPrefix(k, cli.EnvPrefix) {
			continue
		}
		if !flags[k] {
			t.Errorf("deploy/strait.yaml sets %s, which is no flag of strait-gateway run", k)
		}
		t.Setenv(k, v)
	}
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if err := cli.FlagsFromEnv(fs, cli.EnvPrefix); err != nil {
		t.Fatalf("the Deployment's environment: %v", err)
	}
	if !f.leaderElect || f.lease != "strait-gateway" || f.allocations != "kubernetes" || f.allocationsName != "strait-allocations" ||
		o.Site != "cloud-a" || o.MeshFile == "" || o.SiteFile == "" {
		t.Errorf("flags from the Deployment: site %q mesh %q site-file %q leader-elect %t lease %q allocations %q configmap %q",
			o.Site, o.MeshFile, o.SiteFile, f.leaderElect, f.lease, f.allocations, f.allocationsName)
	}
}

// TestRunEnv checks that run reads its flags from the environment, and
// that the command line wins.
func TestRunEnv(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, map[string]string{"STRAIT_LEADER_ELECT_RENEW_DEADLINE": "soon"}, `STRAIT_LEADER_ELECT_RENEW_DEADLINE="soon": not a duration`},
		{nil, map[string]string{"STRAIT_LEADER_ELECT": "maybe"}, `STRAIT_LEADER_ELECT="maybe": not a boolean`},
		{nil, map[string]string{"STRAIT_KUBERNETES": "sometimes"}, `STRAIT_KUBERNETES="sometimes": want on, off or auto`},
		{[]string{"--kubernetes", "off"}, map[string]string{"STRAIT_KUBERNETES": "sometimes", "STRAIT_ALLOCATIONS": "disk"}, `STRAIT_ALLOCATIONS="disk": want file or kubernetes`},
		{[]string{"--kubernetes", "off", "--allocations", "file"}, map[string]string{"STRAIT_LEADER_ELECT": "1", "STRAIT_KUBECONFIG": "/nonexistent/kubeconfig"}, "--kubeconfig /nonexistent/kubeconfig"},
		{[]string{"--kubernetes", "off", "--leader-elect=false", "--site", ""}, map[string]string{"STRAIT_LEADER_ELECT": "1", "STRAIT_SITE": "x", "STRAIT_LOG_LEVEL": "loud"}, `STRAIT_LOG_LEVEL="loud": want debug, info, warn or error`},
		{[]string{"--wireguard", "magic"}, nil, `invalid value "magic" for flag -wireguard: want auto, kernel, userspace or wireguard-go`},
	} {
		t.Run(tc.want, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			err := run(tc.args)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("run: %v, want %q", err, tc.want)
			}
		})
	}
}
