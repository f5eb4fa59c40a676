{{/*
The Grafana dashboard's panels, by row: each panel a title, a unit and PromQL targets over the
release's own series (selected as the ServiceMonitors label them: loupe.promSelector).
test/prometheus.test.ts evaluates every target against a real Prometheus scraping the stack.
A target's `legend` is Grafana's legendFormat.
*/}}
{{- define "loupe.dashboardRows" -}}
{{- $g := include "loupe.promSelector" (dict "root" . "stage" "gateway") -}}
{{- $p := include "loupe.promSelector" (dict "root" . "stage" "preprocessor") -}}
{{- $e := include "loupe.promSelector" (dict "root" . "stage" "encoder") -}}
{{- $d := include "loupe.promSelector" (dict "root" . "stage" "decoder") -}}
{{- $all := printf "namespace=\"%s\", service=~\"%s-(gateway|preprocessor|encoder|decoder)\"" .Release.Namespace (include "loupe.fullname" .) -}}
{{- $r := "[$__rate_interval]" -}}
- title: Gateway
  panels:
    - title: Requests per second, by status
      unit: reqps
      targets:
        - { expr: 'sum by (status) (rate(loupe_gateway_requests_total{ {{- $g -}} }{{ $r }}))', legend: '{{`{{status}}`}}' }
    - title: Errors (share of answers that are 5xx)
      unit: percentunit
      targets:
        - { expr: '(sum(rate(loupe_gateway_requests_total{ {{- $g -}}, status=~"5.."}{{ $r }})) or vector(0)) / sum(rate(loupe_gateway_requests_total{ {{- $g -}} }{{ $r }}))', legend: 5xx }
    - title: End-to-end latency (chat completions)
      unit: s
      targets:
        {{- range $q := list "0.5" "0.95" "0.99" }}
        - { expr: 'histogram_quantile({{ $q }}, sum by (le) (rate(loupe_gateway_request_seconds_bucket{ {{- $g -}} }{{ $r }})))', legend: 'p{{ mulf $q 100 | int }}' }
        {{- end }}
    - title: Requests in flight
      unit: short
      targets:
        - { expr: 'sum(loupe_gateway_requests_in_flight{ {{- $g -}} })', legend: in flight }
    - title: Stages as the gateways see them (1 = serving)
      unit: short
      targets:
        - { expr: 'min by (stage) (loupe_gateway_stage_up{ {{- $g -}} })', legend: '{{`{{stage}}`}}' }
    - title: Tokens per second
      unit: short
      targets:
        - { expr: 'sum(rate(loupe_gateway_prompt_tokens_total{ {{- $g -}} }{{ $r }}))', legend: prompt }
        - { expr: 'sum(rate(loupe_gateway_completion_tokens_total{ {{- $g -}} }{{ $r }}))', legend: completion }
    - title: Images per second, by where the embeddings came from
      unit: short
      targets:
        - { expr: 'sum by (source) (rate(loupe_gateway_images_total{ {{- $g -}} }{{ $r }}))', legend: '{{`{{source}}`}}' }
- title: Preprocessor
  panels:
    - title: Calls per second, by gRPC code
      unit: reqps
      targets:
        - { expr: 'sum by (method, code) (rate(loupe_grpc_server_handled_total{ {{- $p -}} }{{ $r }}))', legend: '{{`{{method}} {{code}}`}}' }
    - title: Errors
      unit: short
      targets:
        - { expr: '(sum(rate(loupe_grpc_server_handled_total{ {{- $p -}}, code!~"OK|NOT_FOUND"}{{ $r }})) or vector(0)) / sum(rate(loupe_grpc_server_handled_total{ {{- $p -}} }{{ $r }}))', legend: share of calls failed }
        - { expr: 'sum by (reason) (rate(loupe_preprocessor_failures_total{ {{- $p -}} }{{ $r }}))', legend: '{{`{{reason}}`}} /s' }
    - title: Latency
      unit: s
      targets:
        {{- range $q := list "0.5" "0.95" "0.99" }}
        - { expr: 'histogram_quantile({{ $q }}, sum by (le) (rate(loupe_preprocessor_latency_seconds_bucket{ {{- $p -}} }{{ $r }})))', legend: 'p{{ mulf $q 100 | int }}' }
        {{- end }}
    - title: Queue depth and images in flight, by pod
      unit: short
      targets:
        - { expr: 'sum by (pod) (loupe_preprocessor_queue_depth{ {{- $p -}} })', legend: '{{`{{pod}}`}} queued' }
        - { expr: 'sum by (pod) (loupe_preprocessor_requests_in_flight{ {{- $p -}} })', legend: '{{`{{pod}}`}} in flight' }
- title: Encoder
  panels:
    - title: Requests per second, by outcome
      unit: reqps
      targets:
        - { expr: 'sum by (outcome) (rate(loupe_encoder_requests_total{ {{- $e -}} }{{ $r }}))', legend: '{{`{{outcome}}`}}' }
    - title: Errors
      unit: short
      targets:
        - { expr: '(sum(rate(loupe_grpc_server_handled_total{ {{- $e -}}, code!~"OK|NOT_FOUND"}{{ $r }})) or vector(0)) / sum(rate(loupe_grpc_server_handled_total{ {{- $e -}} }{{ $r }}))', legend: share of calls failed }
        - { expr: 'sum by (reason) (rate(loupe_encoder_failures_total{ {{- $e -}} }{{ $r }}))', legend: '{{`{{reason}}`}} /s' }
    - title: Queue depth (sub-images), by pod — the autoscaling signal
      unit: short
      targets:
        - { expr: 'sum by (pod) (loupe_encoder_queue_depth{ {{- $e -}} })', legend: '{{`{{pod}}`}}' }
    - title: Batch size (sub-images per run)
      unit: short
      targets:
        - { expr: 'sum(rate(loupe_encoder_batch_size_sum{ {{- $e -}} }{{ $r }})) / sum(rate(loupe_encoder_batch_size_count{ {{- $e -}} }{{ $r }}))', legend: mean }
        - { expr: 'histogram_quantile(0.95, sum by (le) (rate(loupe_encoder_batch_size_bucket{ {{- $e -}} }{{ $r }})))', legend: p95 }
    - title: Embedding cache hit rate
      unit: percentunit
      targets:
        - { expr: 'sum(rate(loupe_encoder_cache_hits_total{ {{- $e -}} }{{ $r }})) / (sum(rate(loupe_encoder_cache_hits_total{ {{- $e -}} }{{ $r }})) + sum(rate(loupe_encoder_cache_misses_total{ {{- $e -}} }{{ $r }})))', legend: hit rate }
    - title: Queue wait and compute time, p95
      unit: s
      targets:
        - { expr: 'histogram_quantile(0.95, sum by (le) (rate(loupe_encoder_queue_wait_seconds_bucket{ {{- $e -}} }{{ $r }})))', legend: queue wait }
        - { expr: 'histogram_quantile(0.95, sum by (le) (rate(loupe_encoder_compute_seconds_bucket{ {{- $e -}} }{{ $r }})))', legend: compute }
    - title: Sub-images encoded per second
      unit: short
      targets:
        - { expr: 'sum(rate(loupe_encoder_sub_images_total{ {{- $e -}} }{{ $r }}))', legend: sub-images }
- title: Decoder
  panels:
    - title: Requests per second, by finish reason
      unit: reqps
      targets:
        - { expr: 'sum by (finished_reason) (rate(loupe_decoder_request_success_total{ {{- $d -}} }{{ $r }}))', legend: '{{`{{finished_reason}}`}}' }
    - title: Errors
      unit: short
      targets:
        - { expr: '(sum(rate(loupe_grpc_server_handled_total{ {{- $d -}}, code!~"OK|NOT_FOUND"}{{ $r }})) or vector(0)) / sum(rate(loupe_grpc_server_handled_total{ {{- $d -}} }{{ $r }}))', legend: share of calls failed }
        - { expr: 'sum by (reason) (rate(loupe_decoder_failures_total{ {{- $d -}} }{{ $r }}))', legend: '{{`{{reason}}`}} /s' }
    {{- range $h := list (list "Time to first token (TTFT)" "loupe_decoder_time_to_first_token_seconds") (list "Time per output token (TPOT)" "loupe_decoder_inter_token_latency_seconds") (list "End-to-end request latency" "loupe_decoder_e2e_request_latency_seconds") }}
    - title: {{ index $h 0 }}
      unit: s
      targets:
        {{- range $q := list "0.5" "0.95" "0.99" }}
        - { expr: 'histogram_quantile({{ $q }}, sum by (le) (rate({{ index $h 1 }}_bucket{ {{- $d -}} }{{ $r }})))', legend: 'p{{ mulf $q 100 | int }}' }
        {{- end }}
    {{- end }}
    - title: Requests running and waiting for a KV slot — the autoscaling signal
      unit: short
      targets:
        - { expr: 'sum(loupe_decoder_num_requests_running{ {{- $d -}} })', legend: running }
        - { expr: 'sum(loupe_decoder_num_requests_waiting{ {{- $d -}} })', legend: waiting }
    - title: KV cache usage, by pod
      unit: percentunit
      targets:
        - { expr: 'max by (pod) (loupe_decoder_kv_cache_usage_perc{ {{- $d -}} })', legend: '{{`{{pod}}`}}' }
    - title: Batch size (sequences per step), by step
      unit: short
      targets:
        - { expr: 'sum by (step) (rate(loupe_decoder_batch_size_sum{ {{- $d -}} }{{ $r }})) / sum by (step) (rate(loupe_decoder_batch_size_count{ {{- $d -}} }{{ $r }}))', legend: '{{`{{step}}`}}' }
    - title: Prefix cache hit rate (prompt tokens found cached)
      unit: percentunit
      targets:
        - { expr: 'sum(rate(loupe_decoder_prefix_cache_hits_total{ {{- $d -}} }{{ $r }})) / sum(rate(loupe_decoder_prefix_cache_queries_total{ {{- $d -}} }{{ $r }}))', legend: hit rate }
    - title: Tokens per second
      unit: short
      targets:
        - { expr: 'sum(rate(loupe_decoder_prompt_tokens_total{ {{- $d -}} }{{ $r }}))', legend: prompt }
        - { expr: 'sum(rate(loupe_decoder_generation_tokens_total{ {{- $d -}} }{{ $r }}))', legend: generated }
- title: Processes
  panels:
    - title: CPU, by pod
      unit: short
      targets:
        - { expr: 'sum by (pod) (rate(loupe_process_cpu_seconds_total{ {{- $all -}} }{{ $r }}))', legend: '{{`{{pod}}`}}' }
    - title: Resident memory, by pod
      unit: bytes
      targets:
        - { expr: 'sum by (pod) (loupe_process_resident_memory_bytes{ {{- $all -}} })', legend: '{{`{{pod}}`}}' }
    - title: Event-loop lag p99, by pod
      unit: s
      targets:
        - { expr: 'max by (pod) (loupe_nodejs_eventloop_lag_p99_seconds{ {{- $all -}} })', legend: '{{`{{pod}}`}}' }
    - title: Scrape targets up
      unit: short
      targets:
        - { expr: 'sum by (service) (up{ {{- $all -}} })', legend: '{{`{{service}}`}}' }
{{- end -}}
