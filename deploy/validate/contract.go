package main

// The deployment contract: what the rendered manifests promise the binaries, checked against
// the binaries themselves.
//   - the gateway has no Kafka setting but KAFKA_TOPIC (no group, no brokers); the ingest has
//     exactly one KAFKA_GROUP_ID; both and the provisioning Job agree on topic and key prefix;
//   - each container of ours (ingest, gateway, dashstream provision) runs `--check-config`
//     with exactly its rendered environment, in a private mount namespace where /run holds
//     generated files at the rendered secret paths; every such path is a mounted Secret item;
//   - probes are GET /healthz (liveness) and /readyz (readiness) on the port the binary's
//     listen setting names; the public gateway Service does not expose that port;
//   - terminationGracePeriodSeconds exceeds the drain (and preStop) it must cover;
//   - the PrometheusRule equals monitoring/alert_rules.yml, the dashboard ConfigMap equals
//     monitoring/grafana/dashstream.json, and the chart's copies equal both byte for byte;
//   - the PodMonitors give the job labels the alert rules use.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

const secretRoot = "/var/run/secrets/dashstream/"

type ours struct {
	w    Workload
	c    *corev1.Container
	bin  string
	args []string
	env  map[string]string
}

func contract(argv []string) []string {
	fs := flag.NewFlagSet("contract", flag.ExitOnError)
	bin := fs.String("bin", "target/debug", "directory of the ingest, gateway and dashstream binaries")
	src := fs.String("sources", ".", "the repository root (monitoring/, the chart)")
	chart := fs.String("chart", "deploy/helm/dashstream", "the chart, relative to -sources")
	_ = fs.Parse(argv)
	objs, errs := decodeFiles(fs.Args())
	if len(errs) > 0 {
		return errs
	}
	fail := func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }

	var cs []ours
	for _, w := range workloads(objs) {
		for i := range w.Pod.Spec.Containers {
			c := &w.Pod.Spec.Containers[i]
			if len(c.Command) == 0 {
				continue
			}
			b := c.Command[0]
			if b != "ingest" && b != "gateway" && b != "dashstream" {
				continue
			}
			o := ours{w: w, c: c, bin: b, args: append(append([]string{}, c.Command[1:]...), c.Args...), env: map[string]string{}}
			if len(c.EnvFrom) > 0 {
				fail("%s %s: envFrom hides which settings are set; list each env", w.Kind, w.Name)
			}
			for _, e := range c.Env {
				if _, dup := o.env[e.Name]; dup {
					fail("%s %s: %s is set twice", w.Kind, w.Name, e.Name)
				}
				switch {
				case e.ValueFrom == nil:
					o.env[e.Name] = e.Value
				case e.ValueFrom.FieldRef != nil:
					o.env[e.Name] = "pod-" + strings.ReplaceAll(e.ValueFrom.FieldRef.FieldPath, ".", "-")
				default:
					fail("%s %s: %s comes from a Secret or ConfigMap key; secrets are mounted files passed as *_FILE", w.Kind, w.Name, e.Name)
				}
			}
			cs = append(cs, o)
		}
	}
	count := map[string]int{}
	for _, o := range cs {
		count[o.bin]++
	}
	if count["ingest"] != 1 || count["gateway"] != 1 {
		fail("expected one ingest and one gateway container, found %d and %d", count["ingest"], count["gateway"])
	}

	files, ferr := secretFiles()
	if ferr != nil {
		return append(errs, ferr.Error())
	}
	byBin := map[string]ours{}
	for _, o := range cs {
		byBin[o.bin] = o
		name := fmt.Sprintf("%s %s", o.w.Kind, o.w.Name)
		switch o.bin {
		case "gateway":
			for k := range o.env {
				if strings.HasPrefix(k, "KAFKA_") && k != "KAFKA_TOPIC" {
					fail("%s: %s set; the gateway has no Kafka at all (no group, no brokers)", name, k)
				}
			}
		case "ingest":
			if g := o.env["KAFKA_GROUP_ID"]; strings.TrimSpace(g) == "" {
				fail("%s: KAFKA_GROUP_ID must be set exactly once, to the group shared by every replica", name)
			}
		}
		errs = append(errs, checkConfig(o, *bin, files)...)
		errs = append(errs, probes(o, objs)...)
		errs = append(errs, grace(o)...)
	}
	for _, k := range []string{"KAFKA_TOPIC", "REDIS_KEY_PREFIX"} {
		if i, g := byBin["ingest"].env[k], byBin["gateway"].env[k]; i != g {
			fail("%s differs between ingest (%q) and gateway (%q): the gateway would serve empty streams", k, i, g)
		}
	}
	if p, ok := byBin["dashstream"]; ok {
		for _, k := range []string{"KAFKA_TOPIC", "KAFKA_DLQ_TOPIC", "KAFKA_BROKERS"} {
			if p.env[k] != byBin["ingest"].env[k] {
				fail("%s differs between the provisioning Job and the ingest", k)
			}
		}
	}
	errs = append(errs, monitoring(objs, *src, filepath.Join(*src, *chart))...)
	if len(errs) == 0 {
		fmt.Printf("contract: %d containers checked (%v)\n", len(cs), count)
	}
	return errs
}

// secretFiles makes the contents of each kind of secret file.
func secretFiles() (map[string][]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "dashstream-contract-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(key)
	pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	secret := base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte("k"), 48))
	return map[string][]byte{
		"cert":   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"key":    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}),
		"public": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}),
		"text":   []byte("contract-test-secret-0123456789abcdef0123456789\n"),
		"jwks":   []byte(`{"keys":[{"kty":"oct","kid":"t","alg":"HS256","k":"` + secret + `"}]}`),
	}, nil
}

func fileKind(env string) string {
	switch {
	case strings.Contains(env, "PUBLIC_KEY"):
		return "public"
	case strings.Contains(env, "JWKS_FILE"):
		return "jwks"
	case strings.Contains(env, "PASSWORD") || strings.Contains(env, "HS256"):
		return "text"
	case strings.Contains(env, "CA_") || strings.Contains(env, "CERT"):
		return "cert"
	case strings.Contains(env, "KEY"):
		return "key"
	}
	return "text"
}

// checkConfig runs `<bin> [args] --check-config` with exactly the container's environment.
func checkConfig(o ours, binDir string, files map[string][]byte) []string {
	var errs []string
	name := fmt.Sprintf("%s %s", o.w.Kind, o.w.Name)
	mounted := map[string]bool{}
	vols := map[string]*corev1.SecretVolumeSource{}
	for _, v := range o.w.Pod.Spec.Volumes {
		vols[v.Name] = v.Secret
	}
	for _, m := range o.c.VolumeMounts {
		if s := vols[m.Name]; s != nil {
			for _, it := range s.Items {
				mounted[filepath.Join(m.MountPath, it.Path)] = true
			}
		}
	}
	run, err := os.MkdirTemp("", "dashstream-run-")
	if err != nil {
		return []string{err.Error()}
	}
	defer os.RemoveAll(run)
	var env []string
	for k, v := range o.env {
		env = append(env, k+"="+v)
		for _, p := range strings.Split(v, ",") {
			if !strings.HasPrefix(p, "/") {
				continue
			}
			if !strings.HasPrefix(p, secretRoot) {
				errs = append(errs, fmt.Sprintf("%s: %s=%s is a path outside %s", name, k, p, secretRoot))
				continue
			}
			if !mounted[p] {
				errs = append(errs, fmt.Sprintf("%s: %s=%s is no mounted Secret item", name, k, p))
			}
			// /var/run is /run: the file goes to <run>/<path below /run>.
			f := filepath.Join(run, strings.TrimPrefix(p, "/var/run/"))
			if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
				return append(errs, err.Error())
			}
			if err := os.WriteFile(f, files[fileKind(k)], 0o600); err != nil {
				return append(errs, err.Error())
			}
		}
	}
	abs, _ := filepath.Abs(filepath.Join(binDir, o.bin))
	args := []string{"-m", "--propagation", "private", "sh", "-c", `mount --bind "$1" /run && shift && exec "$@"`,
		"sh", run, "env", "-i"}
	args = append(args, env...)
	args = append(args, abs)
	args = append(args, o.args...)
	args = append(args, "--check-config")
	out, err := exec.Command("unshare", args...).CombinedOutput()
	if err != nil {
		errs = append(errs, fmt.Sprintf("%s: `%s %s --check-config` with the rendered environment: %v\n%s", name, o.bin, strings.Join(o.args, " "), err, out))
	} else {
		fmt.Printf("contract: %s: %s", name, out)
	}
	return errs
}

func listenPort(v string) (int32, bool) {
	_, p, err := net.SplitHostPort(v)
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(p)
	return int32(n), err == nil
}

func probes(o ours, objs []Object) []string {
	if o.bin == "dashstream" {
		return nil
	}
	var errs []string
	name := fmt.Sprintf("%s %s", o.w.Kind, o.w.Name)
	opsEnv := map[string]string{"ingest": "INGEST_LISTEN", "gateway": "GATEWAY_OPS_LISTEN"}[o.bin]
	ops, ok := listenPort(o.env[opsEnv])
	if !ok {
		return []string{fmt.Sprintf("%s: %s must be set to host:port (the ops port the probes use)", name, opsEnv)}
	}
	for _, p := range []struct {
		kind, path string
		pr         *corev1.Probe
	}{{"liveness", "/healthz", o.c.LivenessProbe}, {"readiness", "/readyz", o.c.ReadinessProbe}} {
		if p.pr == nil || p.pr.HTTPGet == nil {
			errs = append(errs, fmt.Sprintf("%s: no %s httpGet probe", name, p.kind))
			continue
		}
		if p.pr.HTTPGet.Path != p.path {
			errs = append(errs, fmt.Sprintf("%s: %s probe on %q; the binary serves %s", name, p.kind, p.pr.HTTPGet.Path, p.path))
		}
		port := p.pr.HTTPGet.Port.IntVal
		if s := p.pr.HTTPGet.Port.StrVal; s != "" {
			port, _ = portByName(o.c, s)
		}
		if port != ops {
			errs = append(errs, fmt.Sprintf("%s: %s probe on port %d; %s listens on %d", name, p.kind, port, opsEnv, ops))
		}
	}
	if o.bin == "gateway" {
		ws, _ := listenPort(o.env["GATEWAY_LISTEN"])
		for _, obj := range objs {
			svc, ok := obj.Obj.(*corev1.Service)
			if !ok || !selects(o.w.Selector, svc.Spec.Selector) {
				continue
			}
			for _, sp := range svc.Spec.Ports {
				t := sp.TargetPort.IntVal
				if s := sp.TargetPort.StrVal; s != "" {
					t, _ = portByName(o.c, s)
				}
				if t != ws && t != ops {
					errs = append(errs, fmt.Sprintf("Service %s: port %d goes to %d, which the gateway does not serve", svc.Name, sp.Port, t))
				}
				if t == ops && svc.Spec.Type != corev1.ServiceTypeClusterIP {
					errs = append(errs, fmt.Sprintf("Service %s (%s) exposes the ops port", svc.Name, svc.Spec.Type))
				}
				if t == ops && svc.Name == o.w.Name {
					errs = append(errs, fmt.Sprintf("Service %s: the public /ws Service also carries the ops port", svc.Name))
				}
			}
		}
	}
	return errs
}

func grace(o ours) []string {
	if o.bin == "dashstream" {
		return nil
	}
	name := fmt.Sprintf("%s %s", o.w.Kind, o.w.Name)
	envName := map[string]string{"ingest": "INGEST_DRAIN_TIMEOUT_MS", "gateway": "GATEWAY_DRAIN_TIMEOUT_MS"}[o.bin]
	ms, err := strconv.ParseInt(o.env[envName], 10, 64)
	if err != nil {
		return []string{fmt.Sprintf("%s: %s must be set explicitly (the grace period is derived from it)", name, envName)}
	}
	need := (ms + 999) / 1000
	if o.bin == "ingest" {
		need += 10 // ingest/src/main.rs: the shutdown deadline is the drain timeout + 10 s
	}
	if l := o.c.Lifecycle; l != nil && l.PreStop != nil {
		if l.PreStop.Sleep != nil {
			need += l.PreStop.Sleep.Seconds
		} else if l.PreStop.Exec != nil && len(l.PreStop.Exec.Command) == 2 && l.PreStop.Exec.Command[0] == "sleep" {
			s, _ := strconv.ParseInt(l.PreStop.Exec.Command[1], 10, 64)
			need += s
		}
	} else if o.bin == "gateway" {
		return []string{name + ": no preStop: the load balancers would still send clients while it drains"}
	}
	g := o.w.Pod.Spec.TerminationGracePeriodSeconds
	if g == nil || *g <= need {
		got := int64(30)
		if g != nil {
			got = *g
		}
		return []string{fmt.Sprintf("%s: terminationGracePeriodSeconds %d does not exceed preStop + drain (%d s): the drain would be killed", name, got, need)}
	}
	return nil
}

func monitoring(objs []Object, src, chart string) []string {
	var errs []string
	for _, pair := range [][2]string{
		{"monitoring/alert_rules.yml", "files/alert_rules.yml"},
		{"monitoring/grafana/dashstream.json", "files/dashstream.json"},
	} {
		a, err1 := os.ReadFile(filepath.Join(src, pair[0]))
		b, err2 := os.ReadFile(filepath.Join(chart, pair[1]))
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			errs = append(errs, fmt.Sprintf("%s/%s is not a copy of %s: run deploy/render.sh", chart, pair[1], pair[0]))
		}
	}
	rulesYAML, _ := os.ReadFile(filepath.Join(src, "monitoring/alert_rules.yml"))
	var want monitoringv1.PrometheusRuleSpec
	if err := yaml.UnmarshalStrict(rulesYAML, &want); err != nil {
		errs = append(errs, "monitoring/alert_rules.yml does not decode as a PrometheusRule spec: "+err.Error())
	}
	dash, _ := os.ReadFile(filepath.Join(src, "monitoring/grafana/dashstream.json"))
	rules, dashboards, jobs := 0, 0, map[string]bool{}
	for _, o := range objs {
		switch v := o.Obj.(type) {
		case *monitoringv1.PrometheusRule:
			rules++
			if !reflect.DeepEqual(v.Spec, want) {
				errs = append(errs, "PrometheusRule "+v.Name+" differs from monitoring/alert_rules.yml: "+firstDiff(v.Spec, want))
			}
		case *corev1.ConfigMap:
			if d, ok := v.Data["dashstream.json"]; ok {
				dashboards++
				if d != string(dash) {
					errs = append(errs, "ConfigMap "+v.Name+": dashstream.json differs from monitoring/grafana/dashstream.json")
				}
			}
		case *monitoringv1.PodMonitor:
			for _, ep := range v.Spec.PodMetricsEndpoints {
				for _, r := range ep.RelabelConfigs {
					if r.TargetLabel == "job" && r.Replacement != nil {
						jobs[*r.Replacement] = true
					}
				}
			}
		}
	}
	if rules > 1 || dashboards > 1 {
		errs = append(errs, fmt.Sprintf("expected one PrometheusRule and one dashboard ConfigMap, found %d and %d", rules, dashboards))
	}
	if rules == 0 && len(jobs) == 0 {
		// Monitoring turned off (values-dev.yaml: no prometheus-operator); the other renders
		// check it.
		fmt.Println("contract: no PodMonitor or PrometheusRule in this render")
		return errs
	}
	if rules != 1 {
		errs = append(errs, "PodMonitors without the PrometheusRule: the alerts would not exist")
	}
	for _, j := range []string{"dashstream-ingest", "dashstream-gateway"} {
		if !bytes.Contains(rulesYAML, []byte(`"`+j+`"`)) {
			errs = append(errs, "monitoring/alert_rules.yml no longer names job "+j+": update the PodMonitors' job labels")
		}
		if !jobs[j] {
			errs = append(errs, "no PodMonitor sets job="+j+", the job the alert rules and the dashboard use")
		}
	}
	return errs
}

func firstDiff(got, want monitoringv1.PrometheusRuleSpec) string {
	for i := range want.Groups {
		if i >= len(got.Groups) {
			return "group " + want.Groups[i].Name + " missing"
		}
		for j := range want.Groups[i].Rules {
			if j >= len(got.Groups[i].Rules) || !reflect.DeepEqual(got.Groups[i].Rules[j], want.Groups[i].Rules[j]) {
				return fmt.Sprintf("group %s, rule %d (%s)", want.Groups[i].Name, j, want.Groups[i].Rules[j].Alert)
			}
		}
	}
	return "groups differ"
}
