package main

// Output of the cluster commands: protojson for -o json, aligned tables,
// and the small formatters they share.

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard-ml/switchyard/pkg/jobstate"
	coordinatorv1 "github.com/switchyard-ml/switchyard/proto/switchyard/coordinator/v1"
)

// printProto writes m as protojson with the proto field names; multiline
// for a read, one line for each message of a stream.
func printProto(w io.Writer, m proto.Message, oneLine bool) error {
	o := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: false}
	if !oneLine {
		o.Multiline, o.Indent = true, "  "
	}
	b, err := o.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return err
}

// table writes tab-separated rows aligned in columns.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, indent string, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	if indent != "" {
		t.tw = tabwriter.NewWriter(&prefixWriter{w: w, prefix: indent, bol: true}, 0, 0, 2, ' ', 0)
	}
	t.row(anys(header)...)
	return t
}

func anys(s []string) []any {
	a := make([]any, len(s))
	for i, v := range s {
		a[i] = v
	}
	return a
}

func (t *table) row(cells ...any) {
	for i, c := range cells {
		if i > 0 {
			fmt.Fprint(t.tw, "\t")
		}
		fmt.Fprint(t.tw, c)
	}
	fmt.Fprintln(t.tw)
}

func (t *table) flush() error { return t.tw.Flush() }

// prefixWriter indents every line.
type prefixWriter struct {
	w      io.Writer
	prefix string
	bol    bool
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	var out []byte
	for _, c := range b {
		if p.bol {
			out = append(out, p.prefix...)
		}
		out = append(out, c)
		p.bol = c == '\n'
	}
	if _, err := p.w.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}

// parseStates reads "pending,running" into states.
func parseStates(s string) ([]coordinatorv1.JobState, error) {
	var out []coordinatorv1.JobState
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		st, ok := jobstate.Parse(f)
		if !ok {
			return nil, fmt.Errorf("--state %q: unknown state (pending, placed, running, succeeded, failed, cancelled)", f)
		}
		out = append(out, st)
	}
	return out, nil
}

// fmtDuration is a short human duration: 45s, 3m20s, 2h5m, 3d4h.
func fmtDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

// age is the time since unixNano ("-" when unset).
func (c *cli) age(unixNano int64) string {
	if unixNano == 0 {
		return "-"
	}
	return fmtDuration(c.now().Sub(time.Unix(0, unixNano)))
}

// fmtTime is a local timestamp ("-" when unset).
func fmtTime(unixNano int64) string {
	if unixNano == 0 {
		return "-"
	}
	return time.Unix(0, unixNano).Local().Format("2006-01-02 15:04:05")
}

// fmtBytes is a size in binary units.
func fmtBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// fmtLoss is a loss, "-" before the first step.
func fmtLoss(step int64, loss float64) string {
	if step == 0 || math.IsNaN(loss) {
		return "-"
	}
	return fmt.Sprintf("%.4f", loss)
}

// stepTotal is "120/2000" ("-" for an unknown total).
func stepTotal(step, total int64) string {
	if total <= 0 {
		return fmt.Sprintf("%d/-", step)
	}
	return fmt.Sprintf("%d/%d", step, total)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// bar is a text progress bar of width cells.
func bar(step, total int64, width int) string {
	filled := 0
	if total > 0 {
		filled = int(float64(width) * float64(min(step, total)) / float64(total))
	}
	return "[" + strings.Repeat("#", filled) + strings.Repeat(".", width-filled) + "]"
}
