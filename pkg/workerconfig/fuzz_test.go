package workerconfig

import "testing"

// FuzzParse: the file decoder never panics, and whatever it accepts either
// validates or fails with a FieldError after completion.
func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	f.Add([]byte(minimal + "labels: {rack: r1}\ntls: {ca: /a, cert: /b, key: /c}\nresources: {gpus: 2}\n"))
	f.Add([]byte("listen_address: 0.0.0.0:7070\ninsecure: true\n"))
	f.Add([]byte("a: &a [*a, *a]\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := Parse(raw)
		if err != nil {
			return
		}
		if err := c.complete(fakeDetector()); err != nil {
			t.Fatalf("complete with a working detector: %v", err)
		}
		_ = c.Validate()
	})
}
