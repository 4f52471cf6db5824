package scheduler

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// cluster is a snapshot prepared for placement: workers sorted by id with
// empty and repeated ids dropped, grouped by host, and each host's
// topology domain at every level.
type cluster struct {
	workers     []Worker       // sorted by id
	byID        map[string]int // id -> index in workers
	hostOf      []int          // worker -> host index
	hosts       []string       // host names, sorted
	hostWorkers [][]int        // host -> workers, sorted by id
	domains     [][]string     // level -> host -> domain key ("" : not in a domain at that level)
	unit        string         // what a worker is called in reasons
}

func newCluster(snap Snapshot) *cluster {
	ws := make([]Worker, 0, len(snap.Workers))
	count := make(map[string]int, len(snap.Workers))
	for _, w := range snap.Workers {
		count[w.ID]++
	}
	for _, w := range snap.Workers {
		if w.ID != "" && count[w.ID] == 1 {
			ws = append(ws, w)
		}
	}
	sort.Slice(ws, func(a, b int) bool { return ws[a].ID < ws[b].ID })

	cl := &cluster{workers: ws, byID: make(map[string]int, len(ws)), hostOf: make([]int, len(ws)), unit: snap.Unit}
	if cl.unit == "" {
		cl.unit = "worker"
	}
	hostIdx := make(map[string]int)
	var names []string
	for i, w := range ws {
		cl.byID[w.ID] = i
		h := hostName(w)
		if _, ok := hostIdx[h]; !ok {
			hostIdx[h] = -1
			names = append(names, h)
		}
	}
	sort.Strings(names)
	for i, h := range names {
		hostIdx[h] = i
	}
	cl.hosts = names
	cl.hostWorkers = make([][]int, len(names))
	for i, w := range ws {
		h := hostIdx[hostName(w)]
		cl.hostOf[i] = h
		cl.hostWorkers[h] = append(cl.hostWorkers[h], i) // i ascending: sorted by id
	}

	keys := snap.TopologyKeys
	if keys == nil {
		keys = DefaultTopologyKeys()
	}
	cl.domains = make([][]string, len(keys))
	for lvl := range keys {
		cl.domains[lvl] = make([]string, len(names))
		for h := range names {
			labels := ws[cl.hostWorkers[h][0]].Labels // the host's lowest-id worker
			if _, ok := labels[keys[lvl]]; !ok {
				continue
			}
			var b strings.Builder
			for _, k := range keys[lvl:] {
				b.WriteString(strconv.Quote(k + "=" + labels[k]))
			}
			cl.domains[lvl][h] = b.String()
		}
	}
	return cl
}

func hostName(w Worker) string {
	if w.Host == "" {
		return w.ID
	}
	return w.Host
}

// pass is one scheduling pass: which workers earlier plans took and which
// idle workers waiting jobs claim.
type pass struct {
	cl       *cluster
	taken    []bool
	claim    []int // worker -> 1 + index into claimers; 0: unclaimed
	claimers []Job
}

func newPass(cl *cluster) *pass {
	return &pass{cl: cl, taken: make([]bool, len(cl.workers)), claim: make([]int, len(cl.workers))}
}

// failure is why a job was not placed: a sentinel and a sentence.
type failure struct {
	kind   error
	reason string
}

func (f *failure) err(jobID string) error {
	return fmt.Errorf("%w: job %q: %s", f.kind, jobID, f.reason)
}

// static marks the workers that could ever run a rank of job: right
// labels and enough total resources (health and load aside).
func (p *pass) static(job Job) []bool {
	st := make([]bool, len(p.cl.workers))
	for i := range p.cl.workers {
		w := &p.cl.workers[i]
		st[i] = job.PerRank.FitsIn(w.Total) && w.takes(job)
	}
	return st
}

// excluded says why the workers that could never run a rank of job
// (static false) cannot, by the first requirement each misses: " (2 with
// too little memory, 1 not allowing its paths)"; "" when none is left out.
func (p *pass) excluded(job Job, st []bool) string {
	var cores, mem, gpus, gpuMem, labels, paths int
	for i := range p.cl.workers {
		if st[i] {
			continue
		}
		w, need := &p.cl.workers[i], job.PerRank
		switch {
		case need.CPUCores > w.Total.CPUCores:
			cores++
		case need.MemoryMiB > w.Total.MemoryMiB:
			mem++
		case need.GPUs > w.Total.GPUs:
			gpus++
		case !w.gpuMemoryFor(job):
			gpuMem++
		case !labelsMatch(w.Labels, job.Labels):
			labels++
		default:
			paths++
		}
	}
	var parts []string
	for _, c := range []struct {
		n    int
		what string
	}{{cores, "with too few cores"}, {mem, "with too little memory"}, {gpus, "with too few GPUs"}, {gpuMem, "with too little GPU memory"},
		{labels, "without its labels"}, {paths, "not allowing its paths"}} {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c.n, c.what))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// try places job on the free workers (also on claimed ones if useClaimed).
// It returns the plan and the indices of its workers, rank order.
func (p *pass) try(job Job, st []bool, useClaimed bool) (Plan, []int, *failure) {
	cl := p.cl
	l := job.Layout
	world := l.World()

	// Could it ever fit? Count workers of the job's kind per host.
	staticN, staticSlots, staticMaxHost := 0, 0, 0
	// Workers free for it now, per host, and why the others are not.
	availByHost := make([][]int, len(cl.hosts))
	availN := 0
	var unhealthy, busy, short, claimed int
	for h, members := range cl.hostWorkers {
		sn := 0
		for _, i := range members {
			if !st[i] {
				continue
			}
			sn++
			w := &cl.workers[i]
			switch {
			case !w.Healthy:
				unhealthy++
			case w.Job != "" || p.taken[i]:
				busy++
			case !job.PerRank.FitsIn(w.Free):
				short++
			case p.claim[i] != 0 && !useClaimed:
				claimed++
			default:
				availByHost[h] = append(availByHost[h], i)
				availN++
			}
		}
		staticN += sn
		staticSlots += sn / l.TP
		staticMaxHost = max(staticMaxHost, sn)
	}

	unit := cl.unit
	want := describe(job, unit)
	if staticSlots < l.DP {
		var reason string
		switch {
		case staticN == 0:
			reason = fmt.Sprintf("needs %s; the cluster has no such %ss%s", want, unit, p.excluded(job, st))
		case staticN < world:
			reason = fmt.Sprintf("needs %s; the cluster has only %d such %s%s", want, staticN, noun(staticN, unit), p.excluded(job, st))
		case staticMaxHost < l.TP:
			reason = fmt.Sprintf("no host in the cluster can hold a TP group of %d (largest host has %d suitable %s)",
				l.TP, staticMaxHost, noun(staticMaxHost, unit))
		default:
			reason = fmt.Sprintf("needs %d TP groups of %d %ss, each on one host; the cluster's hosts can hold only %d",
				l.DP, l.TP, unit, staticSlots)
		}
		return Plan{}, nil, &failure{ErrTooLarge, reason}
	}

	a := &alloc{cl: cl, tp: l.TP}
	slots, maxHost, nHosts := 0, 0, 0
	for h, free := range availByHost {
		if len(free) == 0 {
			continue
		}
		nHosts++
		maxHost = max(maxHost, len(free))
		if s := len(free) / l.TP; s > 0 {
			a.hs = append(a.hs, hostSlots{h: h, free: free, slots: s})
			slots += s
		}
	}
	if slots < l.DP {
		if availN < world {
			var why []string
			for _, c := range []struct {
				n    int
				what string
			}{
				{busy, "busy"},
				{unhealthy, "unhealthy"},
				{short, "short of free resources"},
				{claimed, "held for higher-priority jobs"},
			} {
				if c.n > 0 {
					why = append(why, fmt.Sprintf("%d %s", c.n, c.what))
				}
			}
			reason := fmt.Sprintf("needs %s, %d free", want, availN)
			if len(why) > 0 {
				reason += " (" + strings.Join(why, ", ") + ")"
			}
			if ex := p.excluded(job, st); ex != "" {
				reason += "; the others cannot take it" + ex
			}
			return Plan{}, nil, &failure{ErrNoFit, reason}
		}
		if maxHost < l.TP {
			return Plan{}, nil, &failure{ErrNoFit, fmt.Sprintf("no host can hold a TP group of %d (largest host has %d free %s)",
				l.TP, maxHost, noun(maxHost, unit))}
		}
		return Plan{}, nil, &failure{ErrNoFit, fmt.Sprintf(
			"needs %d TP groups of %d %ss, each on one host; the free %ss form only %d (%d free %ss on %d hosts)",
			l.DP, l.TP, unit, unit, slots, availN, unit, nHosts)}
	}

	idx := make([]int, 0, world)
	for r := 0; r < l.DP/l.EP; r++ {
		idx = a.replica(l.EP, idx)
	}
	plan := Plan{Job: job, Workers: make([]string, world), Hosts: make([]string, world)}
	for r, i := range idx {
		plan.Workers[r] = cl.workers[i].ID
		plan.Hosts[r] = cl.hosts[cl.hostOf[i]]
	}
	return plan, idx, nil
}

// describe is "8 workers with 1 GPU labelled zone=a" (unit "worker").
func describe(job Job, unit string) string {
	s := fmt.Sprintf("%d %s", job.Layout.World(), noun(job.Layout.World(), unit))
	if job.PerRank != (Resources{}) {
		s += " with " + job.PerRank.String()
		if job.PerRank.GPUs > 0 && job.GPUMemoryMiB > 0 {
			s += fmt.Sprintf(" of %d MiB or more", job.GPUMemoryMiB)
		}
	}
	if len(job.Labels) > 0 {
		s += " labelled " + labelsString(job.Labels)
	}
	if len(job.Paths) > 0 {
		s += " allowing " + strings.Join(job.Paths, " and ") + " (storage_path or allowed_paths)"
	}
	return s
}

func noun(n int, s string) string {
	if n == 1 {
		return s
	}
	return s + "s"
}

// hostSlots is a host's free workers during allocation; slots counts whole
// TP groups.
type hostSlots struct {
	h     int
	free  []int
	slots int
}

type alloc struct {
	cl *cluster
	tp int
	hs []hostSlots // sorted by host name (host index order)
}

// replica places one expert-data-parallel replica (need TP groups) and
// appends its workers to idx in rank order.
func (a *alloc) replica(need int, idx []int) []int {
	for _, m := range a.pick(need) {
		hs := &a.hs[m]
		n := min(need, hs.slots)
		take := n * a.tp
		idx = append(idx, hs.free[:take]...)
		hs.free = hs.free[take:]
		hs.slots -= n
		need -= n
		if need == 0 {
			break
		}
	}
	return idx
}

// pick returns the hosts (indices into a.hs) to fill, in order, for a
// replica of need TP groups: the best-fitting single host, else the
// best-fitting domain at the narrowest topology level that holds it, else
// every host; inside a domain, hosts with more slots first.
func (a *alloc) pick(need int) []int {
	best := -1
	for m, hs := range a.hs {
		if hs.slots >= need && (best < 0 || hs.slots < a.hs[best].slots) {
			best = m
		}
	}
	if best >= 0 {
		return []int{best}
	}
	for _, dom := range a.cl.domains {
		sums := make(map[string]int)
		for _, hs := range a.hs {
			if d := dom[hs.h]; d != "" && hs.slots > 0 {
				sums[d] += hs.slots
			}
		}
		bestD, bestN := "", 0
		for d, n := range sums {
			if n >= need && (bestN == 0 || n < bestN || (n == bestN && d < bestD)) {
				bestD, bestN = d, n
			}
		}
		if bestN > 0 {
			return a.members(func(h int) bool { return dom[h] == bestD })
		}
	}
	return a.members(func(int) bool { return true })
}

// members lists the hosts with slots left that in accepts, most slots
// first, then by name.
func (a *alloc) members(in func(h int) bool) []int {
	var ms []int
	for m, hs := range a.hs {
		if hs.slots > 0 && in(hs.h) {
			ms = append(ms, m)
		}
	}
	sort.SliceStable(ms, func(x, y int) bool { return a.hs[ms[x]].slots > a.hs[ms[y]].slots })
	return ms
}

// Place places one job on the free workers of snap: every rank or none.
// Errors wrap ErrInvalidJob, ErrTooLarge or ErrNoFit and say why.
func Place(snap Snapshot, job Job) (Plan, error) {
	if err := job.Validate(); err != nil {
		return Plan{}, err
	}
	p := newPass(newCluster(snap))
	st := p.static(job)
	plan, _, f := p.try(job, st, false)
	if f == nil {
		return plan, nil
	}
	if plan, _, ok := p.shrink(job, st, f); ok {
		return plan, nil
	}
	return Plan{}, f.err(job.ID)
}

// shrink places an elastic job that does not fit whole (f wraps ErrNoFit
// or ErrTooLarge, not ErrBlocked: a job that waits for its turn keeps its
// size): with the largest dp in [MinDP, DP) that EP divides and that fits
// the free workers no waiting job claims.
func (p *pass) shrink(job Job, st []bool, f *failure) (Plan, []int, bool) {
	if job.MinDP <= 0 || !(errors.Is(f.kind, ErrNoFit) || errors.Is(f.kind, ErrTooLarge)) {
		return Plan{}, nil, false
	}
	for dp := job.Layout.DP - 1; dp >= job.MinDP; dp-- {
		if dp%job.Layout.EP != 0 {
			continue
		}
		small := job
		small.Layout.DP = dp
		if plan, idx, f := p.try(small, st, false); f == nil {
			return plan, idx, true
		}
	}
	return Plan{}, nil, false
}

// Schedule places the queue in order (priority desc, submit sequence asc,
// id asc) against snap, each plan on the workers the earlier ones left, and
// returns the plans in that order and, for every other job, why it waits.
// See the package documentation for the backfill rule.
func Schedule(snap Snapshot, queue []Job) (placed []Plan, pending []Pending) {
	q := append([]Job(nil), queue...)
	sort.SliceStable(q, func(a, b int) bool {
		x, y := q[a], q[b]
		if x.Priority != y.Priority {
			return x.Priority > y.Priority
		}
		if x.Seq != y.Seq {
			return x.Seq < y.Seq
		}
		return x.ID < y.ID
	})
	p := newPass(newCluster(snap))
	seen := make(map[string]bool, len(q))
	for _, job := range q {
		wait := func(f *failure) {
			pending = append(pending, Pending{JobID: job.ID, Reason: f.reason, Err: f.err(job.ID)})
		}
		if why := job.problem(); why != "" {
			wait(&failure{ErrInvalidJob, why})
			continue
		}
		if seen[job.ID] {
			wait(&failure{ErrInvalidJob, "job id appears more than once in the queue"})
			continue
		}
		seen[job.ID] = true

		st := p.static(job)
		plan, idx, f := p.try(job, st, false)
		if f == nil {
			for _, i := range idx {
				p.taken[i] = true
			}
			placed = append(placed, plan)
			continue
		}
		if !errors.Is(f.kind, ErrTooLarge) && len(p.claimers) > 0 {
			if _, idx, f2 := p.try(job, st, true); f2 == nil {
				f = p.blocked(idx)
			}
		}
		if plan, idx, ok := p.shrink(job, st, f); ok {
			for _, i := range idx {
				p.taken[i] = true
			}
			placed = append(placed, plan)
			continue
		}
		wait(f)
		if !errors.Is(f.kind, ErrTooLarge) {
			p.claimFor(job, st)
		}
	}
	return placed, pending
}

// blocked explains a job that would fit on idx but for the claims there.
func (p *pass) blocked(idx []int) *failure {
	first, n := 0, 0
	for _, i := range idx {
		if c := p.claim[i]; c != 0 {
			n++
			if first == 0 || c < first {
				first = c
			}
		}
	}
	if first == 0 { // cannot happen: the free workers alone were too few
		return &failure{ErrBlocked, "waiting for higher-priority jobs"}
	}
	by := p.claimers[first-1]
	return &failure{ErrBlocked, fmt.Sprintf("waiting for higher-priority job %q (priority %d), which has first claim on %d of the free workers this job would use",
		by.ID, by.Priority, n)}
}

// claimFor gives a waiting job every unclaimed worker it could ever use
// (see static) on a host with room for one of its TP groups.
func (p *pass) claimFor(job Job, st []bool) {
	p.claimers = append(p.claimers, job)
	c := len(p.claimers)
	for _, members := range p.cl.hostWorkers {
		n := 0
		for _, i := range members {
			if !p.taken[i] && st[i] {
				n++
			}
		}
		if n < job.Layout.TP {
			continue
		}
		for _, i := range members {
			if !p.taken[i] && st[i] && p.claim[i] == 0 {
				p.claim[i] = c
			}
		}
	}
}
