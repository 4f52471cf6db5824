package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/switchyard-ml/switchyard/pkg/fsutil"
	"github.com/switchyard-ml/switchyard/pkg/jobspec"
	apiv1 "github.com/switchyard-ml/switchyard/proto/switchyard/api/v1"
)

// MetricsPrefix starts a command rank's stdout line that carries its step
// metrics: "SWITCHYARD_METRICS {"step": 12, "loss": 2.31, ...}" (the
// fields of train.StepMetrics; step and loss required). Rank 0's lines are
// appended to its metrics.jsonl and published like the engine's.
const MetricsPrefix = "SWITCHYARD_METRICS "

// prepareCommand is prepare for a command job: the rank's run.yaml is a
// jobspec.CommandConfig, and the rank is `switchyard exec --config
// run.yaml`, which finds the checkpoint to resume from and then becomes
// the job's program.
func (a *Agent) prepareCommand(t *apiv1.Task, spec *jobspec.Spec, task jobspec.Task, host jobspec.Host) (launch, error) {
	if !a.o.Config.AllowCommands {
		return launch{}, refusef("this worker does not run command jobs (set allow_commands: true in its config to let job specs run programs on it)")
	}
	master, err := a.masterAddress(t)
	if err != nil {
		return launch{}, err
	}
	cfg, err := spec.CommandRank(task, int(t.GetRank()), master, host)
	if err != nil {
		return launch{}, refuse(err)
	}
	cfg.CUDAVisibleDevices = a.visibleGPUs(int(t.GetSlot()), spec.Resources.GPUs)
	if slots := t.GetLocalSlots(); len(slots) > 1 {
		// torchrun's convention: every GPU of the job's ranks on this
		// worker, in local-rank order, so that cuda:LOCAL_RANK (with one
		// GPU a rank) is the rank's own
		var all []string
		for _, s := range slots {
			if ids := a.visibleGPUs(int(s), spec.Resources.GPUs); ids != "" {
				all = append(all, ids)
			}
		}
		cfg.CUDAVisibleDevices = strings.Join(all, ",")
	}
	if err := a.confine(spec, cfg.Checkpoint.Dir, ""); err != nil {
		return launch{}, err
	}
	if spec.WorkingDir != "" { // the default, the run directory, is made below
		if err := checkWorkingDir(cfg.WorkingDir); err != nil {
			return launch{}, err
		}
	}
	// as switchyard exec will look for it, with the rank's PATH: a
	// program that is not there, or cannot run, is not there on a
	// restart either (exec would exit 127 or 126)
	if _, err := fsutil.LookProgram(cfg.Command, cfg.WorkingDir, cfg.SearchPath(os.Getenv("PATH"), a.trainer)); err != nil {
		if errors.Is(err, fsutil.ErrProgramNotFound) || errors.Is(err, fsutil.ErrProgramNotExecutable) {
			return launch{}, refuse(err)
		}
		return launch{}, err
	}
	runYAML, err := writeRunDir(host.RunDir, []string{host.RunDir}, cfg)
	if err != nil {
		return launch{}, err
	}
	if err := a.giveRank(host.RunDir); err != nil {
		return launch{}, err
	}
	staging, err := filepath.Rel(cfg.Checkpoint.Dir, cfg.StagingDir())
	if err != nil {
		return launch{}, err
	}
	// the job's directory, its staging directory, the attempt's
	if err := a.checkpointDirs(cfg.Checkpoint.Dir, cfg.Job, filepath.Dir(staging), staging); err != nil {
		return launch{}, err
	}
	return launch{runDir: host.RunDir, args: []string{"exec", "--config", runYAML}, command: true}, nil
}

// checkWorkingDir refuses a rank whose working_dir switchyard exec could
// not enter: missing, not a directory or not reachable, it is so on a
// restart too. Another error (I/O: storage that may come back) is not a
// refusal.
func checkWorkingDir(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case err == nil && !fi.IsDir():
		return refusef("working_dir %s is not a directory", dir)
	case err == nil:
		return nil
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
		return refusef("working_dir %s does not exist on worker", dir)
	case errors.Is(err, fs.ErrPermission):
		return refusef("working_dir %s: %v", dir, err)
	}
	return fmt.Errorf("working_dir: %w", err)
}

// masterAddress is where the job's process group meets: rank 0's worker
// and the data-plane port it keeps for its one rank (the coordinator sends
// every rank the same peers before any starts). A one-rank job on a
// worker without a fixed port gets a free port of this machine.
func (a *Agent) masterAddress(t *apiv1.Task) (string, error) {
	if peers := t.GetPeers(); len(peers) > 0 {
		host, port, err := net.SplitHostPort(peers[0])
		if err == nil && port != "0" && port != "" {
			return net.JoinHostPort(host, port), nil
		}
		if t.GetWorldSize() > 1 {
			return "", refusef("rank 0's address %q has no port for the process group", peers[0])
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("a port for the process group: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// visibleGPUs is CUDA_VISIBLE_DEVICES for a rank in slot that asks for
// n GPUs: the first n of the slot's (see workerconfig.Config.SlotGPUs).
func (a *Agent) visibleGPUs(slot, n int) string {
	ids := a.o.Config.SlotGPUs(slot)
	ids = ids[:min(max(n, 0), len(ids))]
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.Itoa(id)
	}
	return strings.Join(s, ",")
}

// metricsTap passes a command rank's stdout on to next, except the lines
// that start with MetricsPrefix: those (without it) are appended to sink,
// rank 0's metrics.jsonl. Lines that do not start with the prefix pass
// through as they arrive; a metrics line waits for its newline (up to
// maxMetricsLine bytes, beyond which it is dropped and counted).
type metricsTap struct {
	next io.Writer
	sink io.WriteCloser

	mu      sync.Mutex
	buf     []byte // the start of a line that may be a metrics line
	passing bool   // the current line is not a metrics line
	over    bool   // the current metrics line was too long: drop to '\n'
	dropped int
}

func newMetricsTap(next io.Writer, path string) (*metricsTap, error) {
	f, err := createFresh(path)
	if err != nil {
		return nil, err
	}
	return &metricsTap{next: next, sink: f}, nil
}

func (m *metricsTap) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk, p = p[:i+1], p[i+1:]
		} else {
			p = nil
		}
		m.take(chunk, i >= 0)
	}
	return n, nil
}

// take handles one piece of a line (ending the line when eol).
func (m *metricsTap) take(chunk []byte, eol bool) {
	defer func() {
		if eol {
			m.buf, m.passing, m.over = m.buf[:0], false, false
		}
	}()
	if m.passing {
		m.next.Write(chunk)
		return
	}
	if m.over {
		return
	}
	m.buf = append(m.buf, chunk...)
	head := m.buf[:min(len(m.buf), len(MetricsPrefix))]
	if !bytes.HasPrefix([]byte(MetricsPrefix), head) {
		m.passing = true
		m.next.Write(m.buf)
		return
	}
	if len(m.buf) > maxMetricsLine {
		m.over, m.dropped = true, m.dropped+1
		return
	}
	if eol && len(m.buf) > len(MetricsPrefix) {
		m.sink.Write(m.buf[len(MetricsPrefix):]) // a full disk must not stop the rank
	}
}

// close passes on an unterminated last line and closes the sink.
func (m *metricsTap) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.passing && !m.over && len(m.buf) > 0 {
		if bytes.HasPrefix(m.buf, []byte(MetricsPrefix)) {
			m.sink.Write(append(m.buf[len(MetricsPrefix):], '\n'))
		} else {
			m.next.Write(m.buf)
		}
	}
	m.sink.Close()
}
