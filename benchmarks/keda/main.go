// Command keda-harness runs KEDA's own azure-pipelines scaler (github.com/kedacore/keda/v2,
// pkg/scalers, NewAzurePipelinesScaler) outside Kubernetes, against any Azure DevOps URL (the
// benchmark points it at the Azure DevOps emulator).
//
// It reads a JSON configuration on stdin: the organization URL, the pollingInterval in seconds and
// one entry per ScaledJob with that ScaledJob's trigger metadata (poolName or poolID, demands,
// parent, jobsToFetch, ...), exactly the keys of the scaler's documentation. The PAT comes from the
// environment variable named by -pat-env, as the scaler's personalAccessToken auth parameter, so it
// never appears in a process listing.
//
// Each ScaledJob gets its own scaler, built as KEDA's scale handler builds it (one per trigger,
// which also resolves poolName to an id), and its own loop calling GetMetricsAndActivity once per
// pollingInterval; once all are built, the loops start spread evenly over the first interval, as
// ScaledJobs created at different moments would be. Every poll prints one JSON line on stdout: the ScaledJob, the queue
// length the scaler reports, whether it is active, and the desired job count of KEDA's default
// ScaledJob scaling strategy, min(maxReplicaCount, ceil(queueLength / targetPipelinesQueueLength))
// when active, else 0 (keda-docs, reference/scaledjob-spec.md, "scalingStrategy" and
// "maxReplicaCount"; Kubernetes is out of scope here, so running jobs are not subtracted).
//
// Stops on SIGTERM or SIGINT.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers"
	"github.com/kedacore/keda/v2/pkg/scalers/scalersconfig"
)

const defaultMaxReplicaCount = 100 // keda-docs, reference/scaledjob-spec.md

type scaledJob struct {
	Name            string            `json:"name"`
	MaxReplicaCount int64             `json:"maxReplicaCount"`
	Metadata        map[string]string `json:"metadata"`
}

type configuration struct {
	OrganizationURL string      `json:"organizationURL"`
	PollingInterval float64     `json:"pollingInterval"`
	ScaledJobs      []scaledJob `json:"scaledJobs"`
}

type poll struct {
	Time        string  `json:"time"`
	ScaledJob   string  `json:"scaledJob"`
	QueueLength float64 `json:"queueLength"`
	Active      bool    `json:"active"`
	Desired     int64   `json:"desired"`
	Error       string  `json:"error,omitempty"`
}

func main() {
	patEnv := flag.String("pat-env", "AZP_PAT", "environment variable holding the personal access token")
	timeout := flag.Duration("http-timeout", 3*time.Second, "KEDA's KEDA_HTTP_DEFAULT_TIMEOUT")
	flag.Parse()
	var cfg configuration
	if err := json.NewDecoder(os.Stdin).Decode(&cfg); err != nil {
		fail("reading the configuration on stdin: %v", err)
	}
	if cfg.OrganizationURL == "" || cfg.PollingInterval <= 0 || len(cfg.ScaledJobs) == 0 {
		fail("the configuration needs organizationURL, pollingInterval > 0 and at least one of scaledJobs")
	}
	pat := os.Getenv(*patEnv)
	if pat == "" {
		fail("set the personal access token in the environment variable %s", *patEnv)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	interval := time.Duration(cfg.PollingInterval * float64(time.Second))
	out := json.NewEncoder(os.Stdout)
	// Every scaler is built (and its pool looked up) before the first poll, so the polls that follow
	// are the steady state a caller can measure from the first line on.
	built := make([]scalers.Scaler, len(cfg.ScaledJobs))
	for index, job := range cfg.ScaledJobs {
		scaler, err := newScaler(ctx, cfg.OrganizationURL, pat, job, index, *timeout)
		if err != nil {
			fail("scaledJob %q: %v", job.Name, err)
		}
		built[index] = scaler
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for index, job := range cfg.ScaledJobs {
		scaler := built[index]
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer scaler.Close(context.Background())
			offset := time.Duration(index) * interval / time.Duration(len(cfg.ScaledJobs))
			pollEvery(ctx, scaler, job, offset, interval, func(p poll) {
				mu.Lock()
				defer mu.Unlock()
				_ = out.Encode(p)
			})
		}()
	}
	wg.Wait()
}

// newScaler builds the scaler as KEDA's scale handler does for one trigger of a ScaledJob.
func newScaler(
	ctx context.Context, organizationURL, pat string, job scaledJob, index int, timeout time.Duration,
) (scalers.Scaler, error) {
	metadata := map[string]string{"organizationURL": organizationURL}
	for key, value := range job.Metadata {
		metadata[key] = value
	}
	return scalers.NewAzurePipelinesScaler(ctx, &scalersconfig.ScalerConfig{
		ScalableObjectName: job.Name,
		ScalableObjectType: "ScaledJob",
		GlobalHTTPTimeout:  timeout,
		TriggerType:        "azure-pipelines",
		TriggerMetadata:    metadata,
		AuthParams:         map[string]string{"personalAccessToken": pat},
		TriggerIndex:       index,
	})
}

// pollEvery calls the scaler after offset and then once per interval until ctx ends.
func pollEvery(
	ctx context.Context, scaler scalers.Scaler, job scaledJob, offset, interval time.Duration, emit func(poll),
) {
	metricName := scaler.GetMetricSpecForScaling(ctx)[0].External.Metric.Name
	target, err := strconv.ParseFloat(valueOr(job.Metadata["targetPipelinesQueueLength"], "1"), 64)
	if err != nil || target <= 0 {
		target = 1
	}
	maxReplicas := job.MaxReplicaCount
	if maxReplicas <= 0 {
		maxReplicas = defaultMaxReplicaCount
	}
	timer := time.NewTimer(offset)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		timer.Reset(interval)
		p := poll{Time: time.Now().UTC().Format(time.RFC3339Nano), ScaledJob: job.Name}
		metrics, active, err := scaler.GetMetricsAndActivity(ctx, metricName)
		switch {
		case err != nil:
			p.Error = err.Error()
		case len(metrics) > 0:
			p.QueueLength = metrics[0].Value.AsApproximateFloat64()
			p.Active = active
			if active {
				p.Desired = min(maxReplicas, int64(math.Ceil(p.QueueLength/target)))
			}
		}
		emit(p)
	}
}

func valueOr(value, fallback string) string {
	if value == "" {
		return fallback
	}
	return value
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "keda-harness: "+format+"\n", args...)
	os.Exit(2)
}
