package runconfig

import (
	"errors"
	"fmt"
	"math"
)

// ErrOptim is wrapped by every optimizer configuration error.
var ErrOptim = errors.New("optim: invalid config")

// Optim holds AdamW and schedule settings.
type Optim struct {
	LR          float64 `yaml:"lr" json:"lr"`
	MinLR       float64 `yaml:"min_lr" json:"min_lr"` // floor of the cosine decay
	Beta1       float64 `yaml:"beta1" json:"beta1"`
	Beta2       float64 `yaml:"beta2" json:"beta2"`
	Eps         float64 `yaml:"eps" json:"eps"`
	WeightDecay float64 `yaml:"weight_decay" json:"weight_decay"`
	WarmupSteps int     `yaml:"warmup_steps" json:"warmup_steps"`
	ClipNorm    float64 `yaml:"clip_norm" json:"clip_norm"` // 0: no clipping
}

// AdamW's default betas (PyTorch's).
const (
	DefaultBeta1 = 0.9
	DefaultBeta2 = 0.999
)

// Defaults fills zero fields (PyTorch AdamW defaults, lr 3e-4). Parse
// keeps explicit zero betas.
func (c *Optim) Defaults() {
	if c.LR == 0 {
		c.LR = 3e-4
	}
	if c.Beta1 == 0 {
		c.Beta1 = DefaultBeta1
	}
	if c.Beta2 == 0 {
		c.Beta2 = DefaultBeta2
	}
	if c.Eps == 0 {
		c.Eps = 1e-8
	}
}

// Validate names the first broken rule.
func (c Optim) Validate() error {
	bad := func(f string, v any, rule string) error {
		return &fieldError{sentinel: ErrOptim, msg: fmt.Sprintf("optim.%s = %v: %s", f, v, rule)}
	}
	switch {
	case !(c.LR > 0) || math.IsInf(c.LR, 0):
		return bad("lr", c.LR, "must be a positive number")
	case !(c.MinLR >= 0 && c.MinLR <= c.LR):
		return bad("min_lr", c.MinLR, "must be in [0, lr]")
	case !(c.Beta1 >= 0 && c.Beta1 < 1):
		return bad("beta1", c.Beta1, "must be in [0, 1)")
	case !(c.Beta2 >= 0 && c.Beta2 < 1):
		return bad("beta2", c.Beta2, "must be in [0, 1)")
	case !(c.Eps > 0) || math.IsInf(c.Eps, 0):
		return bad("eps", c.Eps, "must be a finite number > 0")
	case !finiteNonNeg(c.WeightDecay):
		return bad("weight_decay", c.WeightDecay, "must be a finite number >= 0")
	case c.WarmupSteps < 0:
		return bad("warmup_steps", c.WarmupSteps, "must be >= 0")
	case !finiteNonNeg(c.ClipNorm):
		return bad("clip_norm", c.ClipNorm, "must be a finite number >= 0 (0 = off)")
	}
	return nil
}

// LRAt is the learning rate of optimizer step t (0-based) of total steps:
// linear warmup over WarmupSteps, then cosine decay from LR to MinLR.
func (c Optim) LRAt(t, total int) float64 {
	if c.WarmupSteps > 0 && t < c.WarmupSteps {
		return c.LR * float64(t+1) / float64(c.WarmupSteps)
	}
	span := total - c.WarmupSteps
	if span <= 1 {
		return c.LR
	}
	frac := float64(t-c.WarmupSteps) / float64(span-1)
	frac = min(max(frac, 0), 1)
	return c.MinLR + 0.5*(c.LR-c.MinLR)*(1+math.Cos(math.Pi*frac))
}
