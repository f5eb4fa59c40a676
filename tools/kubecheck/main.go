// kubecheck validates rendered Kubernetes manifests offline: every object of a built-in kind
// is decoded strictly against the Kubernetes API types (k8s.io/api), so an unknown or
// misspelled field, a wrong type or a duplicate field fails. Objects of other kinds (custom
// resources such as KEDA's ScaledObject) are counted as skipped.
//
//	go build -o .ci/bin/kubecheck ./tools/kubecheck && .ci/bin/kubecheck rendered.yaml...
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"sort"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kubecheck FILE.yaml...")
		os.Exit(2)
	}
	strict := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme.Scheme, scheme.Scheme,
		json.SerializerOptions{Yaml: true, Strict: true})
	valid, invalid := 0, 0
	skipped := map[string]int{}
	for _, file := range os.Args[1:] {
		data, err := os.ReadFile(file)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for {
			doc, err := reader.Read()
			if err == io.EOF {
				break
			}
			if err != nil {
				fmt.Printf("%s: cannot read YAML: %v\n", file, err)
				invalid++
				break
			}
			var h header
			if err := yaml.Unmarshal(doc, &h); err != nil {
				fmt.Printf("%s: not a Kubernetes object: %v\n", file, err)
				invalid++
				continue
			}
			if h.Kind == "" {
				continue // an empty document or only comments
			}
			gvk := schema.FromAPIVersionAndKind(h.APIVersion, h.Kind)
			if !scheme.Scheme.Recognizes(gvk) {
				skipped[gvk.Kind+" ("+gvk.GroupVersion().String()+")"]++
				continue
			}
			if _, _, err := strict.Decode(doc, nil, nil); err != nil {
				fmt.Printf("%s: %s %s: %v\n", file, h.Kind, h.Metadata.Name, err)
				invalid++
				continue
			}
			valid++
		}
	}
	kinds := make([]string, 0, len(skipped))
	for k, n := range skipped {
		kinds = append(kinds, fmt.Sprintf("%s ×%d", k, n))
	}
	sort.Strings(kinds)
	fmt.Printf("kubecheck: %d objects valid, %d invalid; not built-in, skipped: %v\n", valid, invalid, kinds)
	if invalid > 0 {
		os.Exit(1)
	}
}
