package jobspec

import (
	"maps"
	"testing"
)

// TestSettingLabels: the labels a worker's settings give replace what its
// own labels claim; the worker's map is not changed.
func TestSettingLabels(t *testing.T) {
	own := map[string]string{"rack": "r1", CommandsLabel: "true", RankUserLabel: "no"}
	kept := maps.Clone(own)
	for _, tc := range []struct {
		name     string
		labels   map[string]string
		commands bool
		rankUser string
		want     map[string]string
	}{
		{"no labels, no settings", nil, false, "", nil},
		{"claims without settings", own, false, "", map[string]string{"rack": "r1"}},
		{"settings", own, true, "65534:65534", map[string]string{"rack": "r1", CommandsLabel: "true", RankUserLabel: "true"}},
		{"settings, no labels", nil, false, "trainer", map[string]string{RankUserLabel: "true"}},
		{"nothing to do", map[string]string{"rack": "r1"}, false, "", map[string]string{"rack": "r1"}},
	} {
		if got := SettingLabels(tc.labels, tc.commands, tc.rankUser); !maps.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	if !maps.Equal(own, kept) {
		t.Errorf("the worker's labels changed: %v", own)
	}
}
