package train

import "github.com/switchyard-ml/switchyard/pkg/runconfig"

// The run configuration lives in pkg/runconfig, which has no engine
// dependencies: job specs translate to it on the coordinator and the
// worker, and `switchyard train --config` reads it.
type (
	// Config is a training run.
	Config = runconfig.Config
	// LBLConfig selects the load-balancing loss.
	LBLConfig = runconfig.LBL
	// DataConfig says where the corpus comes from.
	DataConfig = runconfig.Data
)

// ErrConfig is wrapped by every run-configuration error.
var ErrConfig = runconfig.ErrConfig

// ParseDevice splits a device name: "cpu" (or "") and "cuda" / "cuda:N".
func ParseDevice(s string) (kind string, ordinal int, err error) { return runconfig.ParseDevice(s) }

// PresetConfig returns the run defaults of a named preset.
func PresetConfig(name string) (Config, error) { return runconfig.PresetConfig(name) }

// Load reads a YAML run config; unknown fields are errors.
func Load(path string) (Config, error) { return runconfig.Load(path) }

// Parse decodes a YAML run config, applies defaults and validates it.
func Parse(raw []byte) (Config, error) { return runconfig.Parse(raw) }
