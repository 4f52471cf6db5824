package coordinator

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

var raftLevels = map[string]hclog.Level{
	"debug": hclog.Debug, "info": hclog.Info, "warn": hclog.Warn, "error": hclog.Error,
}

// newRaftLogger returns an hclog.Logger for hashicorp/raft that forwards
// every record to l: hclog writes JSON lines and slogWriter decodes them.
func newRaftLogger(l *slog.Logger, level string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       "raft",
		Level:      raftLevels[level],
		JSONFormat: true,
		Output:     slogWriter{l},
	})
}

type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimSpace(string(p)), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			w.l.Info(line, "component", "raft")
			continue
		}
		lvl := slog.LevelInfo
		switch rec["@level"] {
		case "trace", "debug":
			lvl = slog.LevelDebug
		case "warn":
			lvl = slog.LevelWarn
		case "error":
			lvl = slog.LevelError
		}
		msg, _ := rec["@message"].(string)
		attrs := []any{"component", "raft"}
		for k, v := range rec {
			if !strings.HasPrefix(k, "@") {
				attrs = append(attrs, strings.ReplaceAll(k, "_", "-"), v)
			}
		}
		w.l.Log(context.Background(), lvl, msg, attrs...)
	}
	return len(p), nil
}
