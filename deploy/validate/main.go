// Command dashstream-k8s-validate checks rendered manifests of the DashStream chart.
//
//	validate FILE...                strict decoding of every object into the official
//	                                k8s.io/api and prometheus-operator types (an unknown or
//	                                duplicate field is an error), plus structural checks
//	contract -bin DIR -root DIR FILE  the deployment contract (see contract.go)
package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"sigs.k8s.io/yaml"
)

// Object is one decoded manifest document.
type Object struct {
	File string
	Obj  runtime.Object
}

func scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, batchv1.AddToScheme, policyv1.AddToScheme,
		autoscalingv2.AddToScheme, networkingv1.AddToScheme, monitoringv1.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}

// decodeFiles strictly decodes every YAML document of the files.
func decodeFiles(files []string) ([]Object, []string) {
	codecs := serializer.NewCodecFactory(scheme(), serializer.EnableStrict)
	dec := codecs.UniversalDeserializer()
	var objs []Object
	var errs []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		for i, doc := range splitDocs(data) {
			js, err := yaml.YAMLToJSON(doc)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: document %d: %v", f, i, err))
				continue
			}
			if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
				continue
			}
			obj, gvk, err := dec.Decode(js, nil, nil)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: document %d: %v", f, i, err))
				continue
			}
			if gvk.Kind == "Kustomization" {
				continue
			}
			objs = append(objs, Object{File: f, Obj: obj})
		}
	}
	return objs, errs
}

func splitDocs(data []byte) [][]byte {
	var out [][]byte
	for _, d := range strings.Split("\n"+string(data), "\n---") {
		if strings.TrimSpace(stripComments(d)) != "" {
			out = append(out, []byte(d))
		}
	}
	return out
}

func stripComments(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: validate FILE... | contract -bin DIR -sources DIR FILE...")
		os.Exit(2)
	}
	var errs []string
	switch os.Args[1] {
	case "validate":
		objs, e := decodeFiles(os.Args[2:])
		errs = append(e, structural(objs)...)
		if len(errs) == 0 {
			fmt.Printf("validate: %d objects decoded strictly and checked\n", len(objs))
		}
	case "contract":
		errs = contract(os.Args[2:])
	default:
		errs = []string{"unknown command " + os.Args[1]}
	}
	if len(errs) > 0 {
		for _, e := range errs {
			fmt.Fprintln(os.Stderr, "FAIL:", e)
		}
		os.Exit(1)
	}
}
