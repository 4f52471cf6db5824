package model

import "github.com/switchyard-ml/switchyard/pkg/runconfig"

// Config describes a decoder-only MoE transformer (runconfig.Model: the
// configuration types live in a package without the engine, so that the
// coordinator can validate job specs without linking it).
type Config = runconfig.Model

// ErrConfig is wrapped by every configuration error.
var ErrConfig = runconfig.ErrModel

// Presets are the named model sizes (runconfig.ModelPresets).
var Presets = runconfig.ModelPresets

// Preset returns a named preset with defaults applied.
func Preset(name string) (Config, error) { return runconfig.ModelPreset(name) }
