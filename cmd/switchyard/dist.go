package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/switchyard-ml/switchyard/pkg/cuda"
	"github.com/switchyard-ml/switchyard/pkg/parallel"
	"github.com/switchyard-ml/switchyard/pkg/runconfig"
	"github.com/switchyard-ml/switchyard/pkg/security"
	"github.com/switchyard-ml/switchyard/pkg/train"
)

// distFlags are the per-rank settings `switchyard launch` (and later the
// worker) passes to `switchyard train`.
type distFlags struct {
	rank, world  int
	tp, dp, ep   int
	balance      string
	peers        string
	hosts        string
	listen       string
	commTimeout  time.Duration
	dataPlane    string
	connectLimit time.Duration
	tls          security.TLSFiles // the run config's dist.tls
}

func (f *distFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&f.rank, "rank", 0, "this process's rank (set by launch)")
	fs.IntVar(&f.world, "world", 1, "number of processes (set by launch)")
	fs.IntVar(&f.tp, "tp", 1, "tensor-parallel degree")
	fs.IntVar(&f.dp, "dp", 0, "data-parallel degree (default world/tp)")
	fs.IntVar(&f.ep, "ep", 1, "expert-parallel degree (divides dp)")
	fs.StringVar(&f.balance, "balance", "dp", "LBL balance group: dp, node or none")
	fs.StringVar(&f.peers, "peers", "", "comma-separated host:port of every rank, in rank order (set by launch)")
	fs.StringVar(&f.hosts, "hosts", "", "comma-separated host of every rank, in rank order: the ranks of a host are a --balance node group (set by launch and the worker; default: the host part of each --peers address)")
	fs.StringVar(&f.listen, "listen", "", "address this rank listens on (default: its entry in --peers)")
	fs.DurationVar(&f.commTimeout, "comm-timeout", 60*time.Second, "a peer silent this long in a collective is an error")
	fs.DurationVar(&f.connectLimit, "connect-timeout", 60*time.Second, "how long to wait for every peer at start")
	fs.StringVar(&f.dataPlane, "data-plane", parallel.DataPlaneTCP, "how collective payloads travel: tcp (a plain socket per rank pair beside the gRPC control stream; faster for large tensors) or grpc (everything on the gRPC streams)")
}

// useConfig takes the layout of the run config's dist section (what a
// worker writes in run.yaml) for every layout flag not given on the
// command line.
func (f *distFlags) useConfig(d runconfig.Dist, fs *flag.FlagSet) {
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	for _, v := range []struct {
		name string
		dst  *int
		val  int
	}{{"world", &f.world, d.World}, {"tp", &f.tp, d.TP}, {"dp", &f.dp, d.DP}, {"ep", &f.ep, d.EP}} {
		if !set[v.name] && v.val > 0 {
			*v.dst = v.val
		}
	}
	f.tls = d.TLS
	if !set["balance"] && d.Balance != "" {
		f.balance = d.Balance
	}
}

func (f *distFlags) layout() (parallel.Layout, error) {
	dp := f.dp
	if dp == 0 && f.tp > 0 {
		dp = f.world / f.tp
	}
	opts := []parallel.LayoutOption{parallel.WithBalance(parallel.Balance(f.balance))}
	if hosts, err := f.rankHosts(); err != nil {
		return parallel.Layout{}, err
	} else if hosts != nil {
		opts = append(opts, parallel.WithHosts(hosts))
	}
	return parallel.NewLayout(f.world, f.tp, dp, f.ep, opts...)
}

// rankHosts is the host of every rank: --hosts, else the host part of
// each --peers address (ranks that listen on one address share a
// machine), else nil (one process).
func (f *distFlags) rankHosts() ([]string, error) {
	if f.hosts != "" {
		hosts := strings.Split(f.hosts, ",")
		if len(hosts) != f.world {
			return nil, fmt.Errorf("train: --hosts has %d hosts for --world %d", len(hosts), f.world)
		}
		return hosts, nil
	}
	if f.peers == "" {
		return nil, nil
	}
	peers := strings.Split(f.peers, ",")
	hosts := make([]string, len(peers))
	for r, p := range peers {
		h, _, err := net.SplitHostPort(p)
		if err != nil {
			return nil, fmt.Errorf("train: --peers: rank %d: %w", r, err)
		}
		hosts[r] = cmp.Or(h, "localhost")
	}
	return hosts, nil
}

// check validates the layout flags of a run of one process too: a
// parallel degree, or a balance group, that one process cannot have is
// refused rather than ignored.
func (f *distFlags) check() error {
	if f.world > 1 {
		return nil // connect checks the layout
	}
	if f.tp > 1 || f.dp > 1 || f.ep > 1 {
		return fmt.Errorf("train: --tp %d --dp %d --ep %d: one process (--world 1) runs without parallelism; start several with `switchyard launch --nproc N --tp %d --ep %d -- <train flags>`", f.tp, max(f.dp, 1), f.ep, f.tp, f.ep)
	}
	switch parallel.Balance(f.balance) {
	case parallel.BalanceDP, parallel.BalanceNode, parallel.BalanceNone:
		return nil
	}
	return fmt.Errorf("train: --balance %q is not one of dp, node, none", f.balance)
}

// connect joins the other ranks over gRPC and returns the trainer's view of
// the run, or nil for a one-process run. The returned close function shuts
// the transport down.
func (f *distFlags) connect(ctx context.Context) (*train.Dist, func(), error) {
	if f.world <= 1 {
		return nil, func() {}, nil
	}
	layout, err := f.layout()
	if err != nil {
		return nil, nil, usageError{err}
	}
	peers := strings.Split(f.peers, ",")
	if len(peers) != f.world {
		return nil, nil, usageError{fmt.Errorf("train: --peers has %d addresses for --world %d", len(peers), f.world)}
	}
	if f.rank < 0 || f.rank >= f.world {
		return nil, nil, usageError{fmt.Errorf("train: --rank %d not in [0, %d)", f.rank, f.world)}
	}
	opts := parallel.DefaultOptions()
	opts.Timeout = f.commTimeout
	// a GPU rank's NCCL calls that cannot be interrupted end the rank
	// after a limit that follows the comm timeout (cuda.NCCLLimitFor)
	cuda.SetNCCLLimit(cuda.NCCLLimitFor(f.commTimeout))
	opts.DialTimeout = f.connectLimit
	opts.DataPlane = f.dataPlane
	if f.tls.Enabled() {
		if opts.TLS, err = security.ClientTLS(f.tls, ""); err != nil {
			return nil, nil, usageError{fmt.Errorf("train: dist.tls: %w", err)}
		}
	}
	listen := f.listen
	if listen == "" {
		listen = peers[f.rank]
	}
	tr, err := parallel.ListenGRPC(f.rank, f.world, listen, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("train: listen on %s: %w", listen, err)
	}
	if err := tr.Connect(ctx, peers); err != nil {
		tr.Close()
		return nil, nil, fmt.Errorf("train: connect to peers: %w", err)
	}
	all := make([]int, f.world)
	for i := range all {
		all[i] = i
	}
	world, err := parallel.NewComm(tr, all, parallel.CommOptions{Name: "world"})
	if err != nil {
		tr.Close()
		return nil, nil, err
	}
	dist, err := train.NewDist(layout, f.rank, world)
	if err != nil {
		tr.Close()
		return nil, nil, usageError{err}
	}
	return dist, func() { tr.Close() }, nil
}
