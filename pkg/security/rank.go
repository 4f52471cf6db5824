package security

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"strconv"
	"strings"
)

// rankTokenPrefix starts every rank token:
// "sy-rank.JOB.ATTEMPT.RANK.WORKER.MAC".
const rankTokenPrefix = "sy-rank."

// RankScope is the scope of a rank token: one rank of one attempt of one job,
// run by one worker.
type RankScope struct {
	Job     string
	Attempt int32
	Rank    int32
}

// RankToken is the token that worker token workerToken hands to the
// process of one rank (the trainer, and the CLI it runs): it acts as the
// worker, narrowed to that rank's job and attempt. An HMAC under the
// worker's token, so a worker makes it without the cluster's secret, the
// coordinator checks it without storing it, and a rank holding it can
// neither sync as the worker nor touch another job's (or attempt's)
// checkpoints; only rank 0's commits. "" when workerToken is not a
// worker token (a coordinator without tokens).
func RankToken(workerToken string, r RankScope) string {
	w, ok := WorkerOf(workerToken)
	if !ok {
		return ""
	}
	return rankToken(workerToken, w, r)
}

func rankToken(workerToken, worker string, r RankScope) string {
	claim := r.Job + "." + strconv.FormatInt(int64(r.Attempt), 10) + "." + strconv.FormatInt(int64(r.Rank), 10) + "." + worker
	mac := hmac.New(sha256.New, []byte(workerToken))
	mac.Write([]byte("switchyard rank " + claim))
	return rankTokenPrefix + claim + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// rankOf parses the claim of a rank token (unverified): its worker and
// scope. Job ids have no dots, worker ids may, the MAC has none.
func rankOf(token string) (worker string, r RankScope, ok bool) {
	rest, ok := strings.CutPrefix(token, rankTokenPrefix)
	if !ok {
		return "", RankScope{}, false
	}
	parts := strings.SplitN(rest, ".", 4) // job, attempt, rank, worker.MAC
	if len(parts) != 4 {
		return "", RankScope{}, false
	}
	attempt, aerr := strconv.ParseInt(parts[1], 10, 32)
	rank, rerr := strconv.ParseInt(parts[2], 10, 32)
	i := strings.LastIndexByte(parts[3], '.')
	if parts[0] == "" || aerr != nil || rerr != nil || attempt < 0 || rank < 0 || i <= 0 {
		return "", RankScope{}, false
	}
	return parts[3][:i], RankScope{Job: parts[0], Attempt: int32(attempt), Rank: int32(rank)}, true
}

// RankMethods are the only calls a rank token may make: its job's
// checkpoint catalogue (the handlers check the job, the attempt and that
// only rank 0 commits and retires).
var RankMethods = map[string]bool{
	"/switchyard.api.v1.Coordinator/ListCheckpoints":  true,
	"/switchyard.api.v1.Coordinator/CommitCheckpoint": true,
	"/switchyard.api.v1.Coordinator/RetireCheckpoint": true,
}

// VerifyRankToken reports whether token is a rank token that workerToken
// made (RankToken), and for which rank: what a worker checks before it
// relays a rank's call.
func VerifyRankToken(workerToken, token string) (RankScope, bool) {
	w, r, ok := rankOf(token)
	if own, isWorker := WorkerOf(workerToken); !ok || !isWorker || own != w {
		return RankScope{}, false
	}
	if subtle.ConstantTimeCompare([]byte(token), []byte(rankToken(workerToken, w, r))) != 1 {
		return RankScope{}, false
	}
	return r, true
}
