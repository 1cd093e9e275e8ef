package main

import (
	"fmt"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Workload is a pod template with its owner's name.
type Workload struct {
	Kind, Name string
	Selector   *metav1.LabelSelector
	Pod        *corev1.PodTemplateSpec
}

func workloads(objs []Object) []Workload {
	var out []Workload
	for _, o := range objs {
		switch v := o.Obj.(type) {
		case *appsv1.Deployment:
			out = append(out, Workload{"Deployment", v.Name, v.Spec.Selector, &v.Spec.Template})
		case *appsv1.StatefulSet:
			out = append(out, Workload{"StatefulSet", v.Name, v.Spec.Selector, &v.Spec.Template})
		case *batchv1.Job:
			out = append(out, Workload{"Job", v.Name, v.Spec.Selector, &v.Spec.Template})
		}
	}
	return out
}

func selects(sel *metav1.LabelSelector, l map[string]string) bool {
	if sel == nil {
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	return err == nil && !s.Empty() && s.Matches(labels.Set(l))
}

func portByName(c *corev1.Container, name string) (int32, bool) {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort, true
		}
	}
	return 0, false
}

// structural: what the API server would refuse, or what would silently select nothing.
func structural(objs []Object) []string {
	var errs []string
	ws := workloads(objs)
	names := map[string]bool{}
	for _, o := range objs {
		m := o.Obj.(metav1.Object)
		key := fmt.Sprintf("%T/%s", o.Obj, m.GetName())
		if names[key] {
			errs = append(errs, "duplicate object "+key)
		}
		names[key] = true
		for _, e := range validation.IsDNS1123Subdomain(m.GetName()) {
			errs = append(errs, fmt.Sprintf("%s: name: %s", key, e))
		}
	}
	for _, w := range ws {
		if w.Kind != "Job" && !selects(w.Selector, w.Pod.Labels) {
			errs = append(errs, fmt.Sprintf("%s %s: selector does not match its pod labels", w.Kind, w.Name))
		}
		vols := map[string]bool{}
		for _, v := range w.Pod.Spec.Volumes {
			vols[v.Name] = true
		}
		for i := range w.Pod.Spec.Containers {
			c := &w.Pod.Spec.Containers[i]
			if c.Image == "" {
				errs = append(errs, fmt.Sprintf("%s %s/%s: no image", w.Kind, w.Name, c.Name))
			}
			for _, p := range c.Ports {
				for _, e := range validation.IsValidPortName(p.Name) {
					errs = append(errs, fmt.Sprintf("%s %s/%s: port %q: %s", w.Kind, w.Name, c.Name, p.Name, e))
				}
			}
			for _, pr := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
				if pr != nil && pr.HTTPGet != nil && pr.HTTPGet.Port.StrVal != "" {
					if _, ok := portByName(c, pr.HTTPGet.Port.StrVal); !ok {
						errs = append(errs, fmt.Sprintf("%s %s/%s: probe port %q is not a port of the container", w.Kind, w.Name, c.Name, pr.HTTPGet.Port.StrVal))
					}
				}
			}
			for _, m := range c.VolumeMounts {
				if !vols[m.Name] {
					errs = append(errs, fmt.Sprintf("%s %s/%s: mount of unknown volume %q", w.Kind, w.Name, c.Name, m.Name))
				}
			}
		}
	}
	podsOf := func(sel *metav1.LabelSelector) []Workload {
		var out []Workload
		for _, w := range ws {
			if selects(sel, w.Pod.Labels) {
				out = append(out, w)
			}
		}
		return out
	}
	for _, o := range objs {
		switch v := o.Obj.(type) {
		case *corev1.Service:
			matched := podsOf(&metav1.LabelSelector{MatchLabels: v.Spec.Selector})
			if len(matched) == 0 {
				errs = append(errs, "Service "+v.Name+": selects no pod")
			}
			for _, p := range v.Spec.Ports {
				for _, w := range matched {
					if p.TargetPort.StrVal == "" {
						continue
					}
					found := false
					for i := range w.Pod.Spec.Containers {
						if _, ok := portByName(&w.Pod.Spec.Containers[i], p.TargetPort.StrVal); ok {
							found = true
						}
					}
					if !found {
						errs = append(errs, fmt.Sprintf("Service %s: targetPort %q is no port of %s", v.Name, p.TargetPort.StrVal, w.Name))
					}
				}
			}
		case *policyv1.PodDisruptionBudget:
			if len(podsOf(v.Spec.Selector)) == 0 {
				errs = append(errs, "PodDisruptionBudget "+v.Name+": selects no pod")
			}
		case *monitoringv1.PodMonitor:
			if len(podsOf(&v.Spec.Selector)) == 0 {
				errs = append(errs, "PodMonitor "+v.Name+": selects no pod")
			}
		case *autoscalingv2.HorizontalPodAutoscaler:
			if !names["*v1.Deployment/"+v.Spec.ScaleTargetRef.Name] {
				errs = append(errs, "HorizontalPodAutoscaler "+v.Name+": no Deployment "+v.Spec.ScaleTargetRef.Name)
			}
		}
	}
	return errs
}
