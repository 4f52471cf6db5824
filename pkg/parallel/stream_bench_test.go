package parallel

import (
	"context"
	"io"
	"net"
	"testing"
)

// BenchmarkTransportStream moves 16 MiB messages between two ranks, one way
// and both ways at once (the traffic of a world-2 ring all-reduce), over
// every transport and over a bare loopback TCP connection (the ceiling).
//
//	go test -run - -bench TransportStream -benchtime 20x ./pkg/parallel
func BenchmarkTransportStream(b *testing.B) {
	const size = 16 << 20
	for _, k := range []string{"mem", "grpc", "grpc-tcp", "tcp"} {
		for _, both := range []bool{false, true} {
			name := k + "/oneway"
			if both {
				name = k + "/bothways"
			}
			b.Run(name, func(b *testing.B) {
				if k == "tcp" {
					benchRawTCP(b, size, both)
					return
				}
				var ts []Transport
				switch k {
				case "mem":
					for _, e := range NewMemTransports(2, Options{}) {
						ts = append(ts, e)
					}
				default:
					opts := Options{}
					if k == "grpc-tcp" {
						opts.DataPlane = DataPlaneTCP
					}
					var err error
					if ts, err = NewLoopbackGRPC(context.Background(), 2, opts); err != nil {
						b.Fatal(err)
					}
				}
				defer CloseTransports(ts)
				ctx := context.Background()
				payload := make([]byte, size)
				b.SetBytes(size)
				b.ResetTimer()
				errs := onAllRanks(2, func(r int) error {
					for i := 0; i < b.N; i++ {
						if r == 0 || both {
							if err := ts[r].Send(ctx, 1-r, 1, payload); err != nil {
								return err
							}
						}
						if r == 1 || both {
							m, err := ts[r].Recv(ctx, 1-r, 1)
							if err != nil {
								return err
							}
							ts[r].(Releaser).Release(m)
						}
					}
					return nil
				})
				for _, err := range errs {
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// benchRawTCP is the same traffic over one plain loopback TCP connection.
func benchRawTCP(b *testing.B, size int, both bool) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer lis.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := lis.Accept()
		acc <- c
	}()
	c0, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	c1 := <-acc
	defer c0.Close()
	defer c1.Close()
	conns := []net.Conn{c0, c1}
	b.SetBytes(int64(size))
	b.ResetTimer()
	errs := onAllRanks(4, func(g int) error { // a writer and a reader per rank
		r, reader := g/2, g%2 == 1
		buf := make([]byte, size)
		for i := 0; i < b.N; i++ {
			switch {
			case reader && (r == 1 || both):
				if _, err := io.ReadFull(conns[r], buf); err != nil {
					return err
				}
			case !reader && (r == 0 || both):
				if _, err := conns[r].Write(buf); err != nil {
					return err
				}
			}
		}
		return nil
	})
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
}
