package data

import (
	"context"
	"fmt"
	"hash/fnv"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// DefaultDemoBytes is the default size of each demo domain.
const DefaultDemoBytes = 1_000_000

// maxDemoDoc bounds the size of one demo document in bytes.
const maxDemoDoc = 8192

// DemoOptions configures Demo. The zero value asks for every demo domain at
// DefaultDemoBytes each, seed 0.
type DemoOptions struct {
	// Seed drives every generated domain and the choice of Go files.
	Seed int64
	// BytesPerDomain is the text size of each domain; 0 means
	// DefaultDemoBytes. Each domain gets at least this many bytes and less
	// than BytesPerDomain+8192 (documents are kept whole).
	BytesPerDomain int
	// Domains selects and orders the domains; nil means DemoDomains().
	Domains []string
	// GoRoot is the Go installation whose src/ feeds the "go" domain. Empty
	// means $GOROOT, else `go env GOROOT`, else the GOROOT this binary was
	// built with.
	GoRoot string
}

// DemoDomains lists the demo corpus domains:
//
//	arith    generated worked arithmetic problems with their steps
//	go       Go source files of the standard library ($GOROOT/src)
//	logs     generated service log lines
//	records  generated JSON records: users, orders, sensor readings
func DemoDomains() []string { return []string{"arith", "go", "logs", "records"} }

// Demo returns a multi-domain corpus built from what any machine with Go
// has: no downloads. It is deterministic for a given Seed, Go release and,
// for the "go" domain, Go source tree. Documents come domain by domain in
// opts.Domains order. Without a Go source tree the "go" domain gives
// ErrNoGoSource.
func Demo(opts DemoOptions) ([]Document, error) {
	target := opts.BytesPerDomain
	if target == 0 {
		target = DefaultDemoBytes
	}
	if target < 0 {
		return nil, errorf(ErrInvalidConfig, nil, "demo BytesPerDomain %d", target)
	}
	domains := opts.Domains
	if domains == nil {
		domains = DemoDomains()
	}
	var docs []Document
	for _, dom := range domains {
		h := fnv.New64a()
		h.Write([]byte(dom))
		r := rand.New(rand.NewPCG(uint64(opts.Seed), h.Sum64()))
		var (
			texts []string
			err   error
		)
		switch dom {
		case "arith":
			texts = generate(r, target, arithProblem)
		case "records":
			texts = generateDocs(r, target, recordsDoc)
		case "logs":
			texts = generateDocs(r, target, logsDoc)
		case "go":
			texts, err = goSource(opts.GoRoot, r, target)
		default:
			return nil, errorf(ErrUnknownDomain, nil, "%q (known: %s)", dom, strings.Join(DemoDomains(), ", "))
		}
		if err != nil {
			return nil, err
		}
		for _, t := range texts {
			docs = append(docs, Document{Domain: dom, Text: t})
		}
	}
	return docs, nil
}

// generate groups items from gen into documents of 1-4 KB until target
// bytes are reached.
func generate(r *rand.Rand, target int, gen func(*rand.Rand, *strings.Builder)) []string {
	return generateDocs(r, target, func(r *rand.Rand, b *strings.Builder) {
		size := 1000 + r.IntN(3000)
		for b.Len() < size {
			gen(r, b)
			b.WriteByte('\n')
		}
	})
}

// generateDocs calls gen for one document at a time until target bytes.
func generateDocs(r *rand.Rand, target int, gen func(*rand.Rand, *strings.Builder)) []string {
	var out []string
	var b strings.Builder
	for total := 0; total < target; {
		b.Reset()
		gen(r, &b)
		t := strings.TrimRight(b.String(), "\n")
		if len(t) > maxDemoDoc {
			if cut := strings.LastIndexByte(t[:maxDemoDoc], '\n'); cut > 0 {
				t = t[:cut]
			} else {
				t = t[:maxDemoDoc]
			}
		}
		out = append(out, t)
		total += len(t)
	}
	return out
}

// ---- arith ----

func arithProblem(r *rand.Rand, b *strings.Builder) {
	switch r.IntN(6) {
	case 0, 1:
		arithChain(r, b)
	case 2:
		arithParen(r, b)
	case 3:
		arithDivmod(r, b)
	case 4:
		arithColumnAdd(r, b)
	default:
		arithWord(r, b)
	}
}

func num(r *rand.Rand) int {
	if r.IntN(4) == 0 {
		return 100 + r.IntN(900)
	}
	return 1 + r.IntN(99)
}

// arithChain: sums of products (and exact quotients), evaluated with
// precedence: "Q: 37*12+5 = ?\nA: 37*12 = 444; 444+5 = 449\n".
func arithChain(r *rand.Rand, b *strings.Builder) {
	for {
		var expr strings.Builder
		var steps []string
		acc := 0
		nterms := 1 + r.IntN(3)
		for t := range nterms {
			val := num(r)
			texpr := fmt.Sprint(val)
			for range r.IntN(3) {
				var divs []int
				for d := 2; d <= 12; d++ {
					if val%d == 0 {
						divs = append(divs, d)
					}
				}
				if len(divs) > 0 && r.IntN(3) == 0 {
					d := divs[r.IntN(len(divs))]
					steps = append(steps, fmt.Sprintf("%d/%d = %d", val, d, val/d))
					texpr += fmt.Sprintf("/%d", d)
					val /= d
				} else {
					m := 2 + r.IntN(98)
					steps = append(steps, fmt.Sprintf("%d*%d = %d", val, m, val*m))
					texpr += fmt.Sprintf("*%d", m)
					val *= m
				}
			}
			if t == 0 {
				acc = val
				expr.WriteString(texpr)
				continue
			}
			op := "+-"[r.IntN(2)]
			next := acc + val
			if op == '-' {
				next = acc - val
			}
			steps = append(steps, fmt.Sprintf("%d%c%d = %d", acc, op, val, next))
			expr.WriteByte(op)
			expr.WriteString(texpr)
			acc = next
		}
		if len(steps) < 2 {
			continue
		}
		fmt.Fprintf(b, "Q: %s = ?\nA: %s\n", expr.String(), strings.Join(steps, "; "))
		return
	}
}

// arithParen: "Q: (18+7)*4-9 = ?\nA: 18+7 = 25; 25*4 = 100; 100-9 = 91\n".
func arithParen(r *rand.Rand, b *strings.Builder) {
	a, c, m := num(r), num(r), 2+r.IntN(20)
	op := "+-"[r.IntN(2)]
	s := a + c
	if op == '-' {
		s = a - c
	}
	p := s * m
	expr := fmt.Sprintf("(%d%c%d)*%d", a, op, c, m)
	steps := []string{fmt.Sprintf("%d%c%d = %d", a, op, c, s), fmt.Sprintf("%d*%d = %d", s, m, p)}
	if r.IntN(2) == 0 {
		d := num(r)
		op2 := "+-"[r.IntN(2)]
		q := p + d
		if op2 == '-' {
			q = p - d
		}
		expr += fmt.Sprintf("%c%d", op2, d)
		steps = append(steps, fmt.Sprintf("%d%c%d = %d", p, op2, d, q))
	}
	fmt.Fprintf(b, "Q: %s = ?\nA: %s\n", expr, strings.Join(steps, "; "))
}

// arithDivmod: "Q: 458 divided by 7 = ?\nA: 7*65 = 455; 458-455 = 3; 458 = 7*65+3\n".
func arithDivmod(r *rand.Rand, b *strings.Builder) {
	d := 2 + r.IntN(30)
	q := 2 + r.IntN(500)
	rem := r.IntN(d)
	n := d*q + rem
	fmt.Fprintf(b, "Q: %d divided by %d = ?\nA: %d*%d = %d; %d-%d = %d; %d = %d*%d+%d, quotient %d remainder %d\n",
		n, d, d, q, d*q, n, d*q, rem, n, d, q, rem, q, rem)
}

// arithColumnAdd: column addition with carries, ones first.
func arithColumnAdd(r *rand.Rand, b *strings.Builder) {
	x := 100 + r.IntN(99900)
	y := 100 + r.IntN(99900)
	fmt.Fprintf(b, "Q: %d+%d = ?\nA:", x, y)
	places := []string{"ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands"}
	carry := 0
	for i, xs, ys := 0, x, y; xs > 0 || ys > 0 || carry > 0; i++ {
		dx, dy := xs%10, ys%10
		s := dx + dy + carry
		if xs == 0 && ys == 0 {
			fmt.Fprintf(b, " %s carry %d", places[i], carry)
		} else if carry > 0 {
			fmt.Fprintf(b, " %s %d+%d+%d = %d", places[i], dx, dy, carry, s)
		} else {
			fmt.Fprintf(b, " %s %d+%d = %d", places[i], dx, dy, s)
		}
		carry = s / 10
		if carry > 0 {
			fmt.Fprintf(b, ", write %d carry 1", s%10)
		}
		b.WriteByte(';')
		xs, ys = xs/10, ys/10
	}
	fmt.Fprintf(b, " %d+%d = %d\n", x, y, x+y)
}

var (
	demoNames = []string{"Ada", "Ben", "Chloe", "Dmitri", "Eva", "Farid", "Grace", "Hugo", "Ines", "Jonas",
		"Kemal", "Lena", "Mia", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sami", "Tara", "Uma", "Victor"}
	demoSurnames = []string{"Novak", "Okafor", "Silva", "Tanaka", "Weber", "Rossi", "Kowalski", "Haddad",
		"Larsen", "Moreau", "Nguyen", "Petrov", "Garcia", "Schmidt", "Ahmed", "Brown"}
	demoItems  = []string{"pens", "apples", "books", "marbles", "stickers", "cards", "eggs", "bolts", "cups", "shells"}
	demoCities = []string{"Lisbon", "Osaka", "Nairobi", "Lyon", "Denver", "Krakow", "Porto", "Quito", "Tallinn", "Perth"}
)

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

// arithWord: a two- or three-step word problem.
func arithWord(r *rand.Rand, b *strings.Builder) {
	name, item := pick(r, demoNames), pick(r, demoItems)
	boxes, per := 2+r.IntN(11), 2+r.IntN(47)
	total := boxes * per
	switch r.IntN(3) {
	case 0:
		give := 1 + r.IntN(total)
		fmt.Fprintf(b, "Q: %s has %d boxes of %d %s and gives away %d %s. How many %s does %s have left?\n"+
			"A: %d*%d = %d; %d-%d = %d\n", name, boxes, per, item, give, item, item, name,
			boxes, per, total, total, give, total-give)
	case 1:
		extra := 1 + r.IntN(60)
		friends := 2 + r.IntN(6)
		all := total + extra
		fmt.Fprintf(b, "Q: %s buys %d packs of %d %s, finds %d more and shares them among %d friends. "+
			"How many does each friend get, and how many are left over?\n"+
			"A: %d*%d = %d; %d+%d = %d; %d = %d*%d+%d, so each gets %d and %d are left\n",
			name, boxes, per, item, extra, friends,
			boxes, per, total, total, extra, all, all, friends, all/friends, all%friends, all/friends, all%friends)
	default:
		price := 1 + r.IntN(40)
		paid := (total*price/50 + 1) * 50
		fmt.Fprintf(b, "Q: %d %s cost %d each; %s buys %d boxes of %d and pays with %d. What is the change?\n"+
			"A: %d*%d = %d; %d*%d = %d; %d-%d = %d\n", per, item, price, name, boxes, per, paid,
			boxes, per, total, total, price, total*price, paid, total*price, paid-total*price)
	}
}

// ---- records ----

var demoEpoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// tenths formats v/10 with one decimal.
func tenths(v int) string {
	sign := ""
	if v < 0 {
		sign, v = "-", -v
	}
	return fmt.Sprintf("%s%d.%d", sign, v/10, v%10)
}

func money(cents int) string { return fmt.Sprintf("%d.%02d", cents/100, cents%100) }

func recordsDoc(r *rand.Rand, b *strings.Builder) {
	n := 8 + r.IntN(25)
	switch r.IntN(3) {
	case 0:
		id := 10000 + r.IntN(80000)
		for i := range n {
			first, last := pick(r, demoNames), pick(r, demoSurnames)
			signup := demoEpoch.AddDate(-r.IntN(6), 0, -r.IntN(365)).Format(time.DateOnly)
			fmt.Fprintf(b, `{"type":"user","id":%d,"name":"%s %s","email":"%s.%s@example.com","age":%d,"city":"%s","active":%t,"signup":"%s"}`+"\n",
				id+i, first, last, strings.ToLower(first), strings.ToLower(last), 18+r.IntN(60),
				pick(r, demoCities), r.IntN(5) != 0, signup)
		}
	case 1:
		oid := r.IntN(900000)
		statuses := []string{"pending", "paid", "shipped", "delivered", "cancelled"}
		for i := range n {
			fmt.Fprintf(b, `{"type":"order","order_id":"ORD-%06d","user_id":%d,"items":[`, oid+i, 10000+r.IntN(90000))
			sum := 0
			for k := range 1 + r.IntN(4) {
				if k > 0 {
					b.WriteByte(',')
				}
				qty, price := 1+r.IntN(5), 99+r.IntN(9900)
				sum += qty * price
				fmt.Fprintf(b, `{"sku":"%s-%03d","qty":%d,"unit_price":%s}`,
					strings.ToUpper(pick(r, demoItems)[:3]), r.IntN(1000), qty, money(price))
			}
			fmt.Fprintf(b, `],"total":%s,"currency":"%s","status":"%s"}`+"\n",
				money(sum), pick(r, []string{"EUR", "USD", "GBP"}), pick(r, statuses))
		}
	default:
		kinds := []struct {
			name, unit string
			base, step int // tenths
		}{{"temp", "C", 215, 3}, {"humidity", "%", 450, 10}, {"pressure", "hPa", 10130, 5}, {"co2", "ppm", 4200, 40}}
		k := pick(r, kinds)
		sensor := fmt.Sprintf("%s-%02d", k.name, 1+r.IntN(40))
		ts := demoEpoch.Add(time.Duration(r.IntN(365*24*3600)) * time.Second)
		every := time.Duration(pick(r, []int{5, 10, 30, 60})) * time.Second
		v := k.base + r.IntN(2*k.step*10+1) - k.step*10
		for range n {
			fmt.Fprintf(b, `{"type":"reading","sensor":"%s","ts":"%s","value":%s,"unit":"%s"}`+"\n",
				sensor, ts.Format(time.RFC3339), tenths(v), k.unit)
			ts = ts.Add(every)
			v += r.IntN(2*k.step+1) - k.step
		}
	}
}

// ---- logs ----

func logsDoc(r *rand.Rand, b *strings.Builder) {
	ts := demoEpoch.Add(time.Duration(r.IntN(365*24*3600)) * time.Second)
	host := fmt.Sprintf("node-%02d", 1+r.IntN(24))
	paths := []string{"/v1/users/%d", "/v1/orders/%d", "/v1/items/%d", "/healthz", "/v1/search?q=%s", "/v1/login"}
	methods := []string{"GET", "GET", "GET", "POST", "PUT", "DELETE"}
	for range 20 + r.IntN(40) {
		ts = ts.Add(time.Duration(r.IntN(2000)) * time.Millisecond)
		stamp := ts.Format("2006-01-02T15:04:05.000Z")
		switch x := r.IntN(20); {
		case x < 11:
			p := pick(r, paths)
			switch {
			case strings.Contains(p, "%d"):
				p = fmt.Sprintf(p, 1+r.IntN(99999))
			case strings.Contains(p, "%s"):
				p = fmt.Sprintf(p, pick(r, demoItems))
			}
			status := pick(r, []int{200, 200, 200, 200, 201, 204, 304, 400, 404, 500})
			fmt.Fprintf(b, "%s INFO  %s api request method=%s path=%s status=%d dur_ms=%d req=%08x\n",
				stamp, host, pick(r, methods), p, status, 1+r.IntN(250), r.Uint32())
		case x < 13:
			fmt.Fprintf(b, "%s DEBUG %s cache miss key=user:%d\n", stamp, host, 1+r.IntN(99999))
		case x < 15:
			user := strings.ToLower(pick(r, demoNames) + "." + pick(r, demoSurnames))
			fmt.Fprintf(b, "%s INFO  %s auth login user=%s ok=%t\n", stamp, host, user, r.IntN(6) != 0)
		case x < 17:
			fmt.Fprintf(b, "%s WARN  %s db slow query table=%s rows=%d dur_ms=%d\n",
				stamp, host, pick(r, []string{"users", "orders", "items", "events"}), r.IntN(50000), 500+r.IntN(4000))
		case x < 19:
			fmt.Fprintf(b, "%s ERROR %s worker job failed job=%s-%d attempt=%d err=%q\n", stamp, host,
				pick(r, []string{"resize", "email", "export", "reindex"}), r.IntN(10000), 1+r.IntN(3),
				pick(r, []string{"timeout after 30s", "connection refused", "disk quota exceeded", "context canceled"}))
		default:
			fmt.Fprintf(b, "%s INFO  %s gc pause_us=%d heap_mb=%d goroutines=%d\n",
				stamp, host, 50+r.IntN(900), 64+r.IntN(2000), 10+r.IntN(500))
		}
	}
}

// ---- go ----

// goSource returns chunks of standard library Go files (no tests, testdata,
// vendor or generated files), in a seeded order of the sorted file list.
func goSource(goroot string, r *rand.Rand, target int) ([]string, error) {
	root, err := findGoRoot(goroot)
	if err != nil {
		return nil, err
	}
	src := filepath.Join(root, "src")
	var files []string
	err = filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != src && (name == "testdata" || name == "vendor" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		if info, err := d.Info(); err != nil || info.Size() > 256<<10 {
			return nil
		}
		files = append(files, path)
		return nil
	})
	if err != nil {
		return nil, errorf(ErrNoGoSource, err, "demo domain \"go\": walk %s", src)
	}
	if len(files) == 0 {
		return nil, errorf(ErrNoGoSource, nil, "demo domain \"go\": no .go files under %s", src)
	}
	slices.Sort(files)
	for i := len(files) - 1; i > 0; i-- {
		j := r.IntN(i + 1)
		files[i], files[j] = files[j], files[i]
	}
	var out []string
	total := 0
	for _, f := range files {
		if total >= target {
			break
		}
		b, err := os.ReadFile(f)
		if err != nil || !utf8.Valid(b) || isGenerated(b) {
			continue
		}
		for _, c := range chunkLines(string(b), maxDemoDoc) {
			if total >= target {
				break
			}
			out = append(out, c)
			total += len(c)
		}
	}
	if total < target {
		return nil, errorf(ErrNoGoSource, nil, "demo domain \"go\": only %d bytes of Go source under %s, want %d", total, src, target)
	}
	return out, nil
}

func isGenerated(b []byte) bool {
	head := string(b[:min(len(b), 4000)])
	return strings.Contains(head, "// Code generated") && strings.Contains(head, "DO NOT EDIT")
}

// chunkLines cuts text at line ends into pieces of at most max bytes,
// closing a piece at a blank line once it is half full. Lines longer than
// max are cut at a rune boundary. Newlines at either end of a piece and
// blank pieces are dropped.
func chunkLines(text string, max int) []string {
	var out []string
	start, end := 0, 0 // the open piece is text[start:end]
	flush := func() {
		if p := strings.Trim(text[start:end], "\n"); strings.TrimSpace(p) != "" {
			out = append(out, p)
		}
		start = end
	}
	for end < len(text) {
		lineStart, lineEnd := end, len(text)
		if nl := strings.IndexByte(text[end:], '\n'); nl >= 0 {
			lineEnd = end + nl + 1
		}
		if lineEnd-start > max {
			flush()
			for lineEnd-start > max {
				cut := start + max
				for cut > start+1 && !utf8.RuneStart(text[cut]) {
					cut--
				}
				end = cut
				flush()
			}
		}
		end = lineEnd
		if end-start >= max/2 && strings.TrimSpace(text[lineStart:lineEnd]) == "" {
			flush()
		}
	}
	flush()
	return out
}

// findGoRoot returns a Go installation directory that has a src/ tree.
func findGoRoot(explicit string) (string, error) {
	var candidates []string
	if explicit != "" {
		candidates = []string{explicit}
	} else {
		if env := os.Getenv("GOROOT"); env != "" {
			candidates = append(candidates, env)
		}
		if goBin, err := exec.LookPath("go"); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			out, err := exec.CommandContext(ctx, goBin, "env", "GOROOT").Output()
			cancel()
			if err == nil {
				candidates = append(candidates, strings.TrimSpace(string(out)))
			}
		}
		//lint:ignore SA1019 last resort when no go command is installed.
		candidates = append(candidates, runtime.GOROOT())
	}
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if fi, err := os.Stat(filepath.Join(c, "src")); err == nil && fi.IsDir() {
			return c, nil
		}
	}
	return "", errorf(ErrNoGoSource, nil, "demo domain \"go\": no src/ directory in %q (set DemoOptions.GoRoot or GOROOT)", candidates)
}
