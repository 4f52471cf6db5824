/*
 * fakenccl: a stand-in for libnccl.so.2 with NCCL's C interface, for the
 * tests of the Go bindings (nccl.go) on machines without a GPU. Ranks are
 * threads of one process; "device" buffers are host memory; every call is
 * synchronous (it returns when the collective is done on every rank).
 *
 * What it checks that the real library would not say as clearly:
 *   - the 128-byte id passed BY VALUE to ncclCommInitRank arrives intact
 *     (a magic at its start, a checksum of all other bytes at its end);
 *   - the stream, the last (stack) argument of every collective, is the
 *     legacy NULL stream the bindings use;
 *   - within a group, a receive finds a send of the same size.
 * Written for these tests; it shares no code with NCCL.
 *
 * Build: cc -shared -fPIC -O1 -pthread -o libnccl.so.2 fakenccl.c
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct { char internal[128]; } ncclUniqueId;
typedef int ncclResult_t;
enum { OK = 0, SYSTEM = 2, INTERNAL = 3, INVALID_ARG = 4, INVALID_USAGE = 5 };
enum { T_INT32 = 2, T_FLOAT32 = 7 };
enum { OP_SUM = 0, OP_PROD = 1, OP_MAX = 2, OP_MIN = 3, OP_AVG = 4 };

#define WAIT_SECONDS 20
#define MAX_OPS 1024

struct mail {
    const void *buf;
    size_t bytes;
    int set;
};

struct group {
    struct group *next;
    unsigned char id[128];
    int nranks, joined, left, dead;
    unsigned char *present;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int arrived;
    unsigned gen;
    const void **slots;
    struct mail *mail; /* [from * nranks + to] */
};

struct ncclComm {
    struct group *g;
    int rank;
    char last[256];
};
typedef struct ncclComm *ncclComm_t;

static pthread_mutex_t reg = PTHREAD_MUTEX_INITIALIZER;
static struct group *groups;
static unsigned long counter;

static uint64_t checksum(const unsigned char *b, int n) {
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

ncclResult_t ncclGetVersion(int *v) {
    if (!v) return INVALID_ARG;
    *v = 21805; /* reported as 2.18.5 */
    return OK;
}

const char *ncclGetErrorString(ncclResult_t r) {
    switch (r) {
    case OK: return "no error";
    case SYSTEM: return "fake: system error";
    case INTERNAL: return "fake: internal error";
    case INVALID_ARG: return "fake: invalid argument";
    case INVALID_USAGE: return "fake: invalid usage";
    }
    return "fake: unknown result";
}

static ncclResult_t fail(ncclComm_t c, ncclResult_t r, const char *msg) {
    if (c) snprintf(c->last, sizeof c->last, "%s", msg);
    return r;
}

const char *ncclGetLastError(ncclComm_t c) { return c ? c->last : ""; }

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    if (!id) return INVALID_ARG;
    unsigned char *b = (unsigned char *)id->internal;
    pthread_mutex_lock(&reg);
    unsigned long k = ++counter;
    pthread_mutex_unlock(&reg);
    memcpy(b, "fakenccl", 8);
    for (int i = 8; i < 120; i++) b[i] = (unsigned char)(k * 131 + (unsigned long)getpid() * 7 + (unsigned long)i * 29);
    uint64_t h = checksum(b, 120);
    memcpy(b + 120, &h, 8);
    return OK;
}

static int wait_seconds = WAIT_SECONDS;

/* fakenccl_set_wait: how long a rank waits for the others (tests of
   what a rank that never comes does to the others). Not part of NCCL. */
void fakenccl_set_wait(int seconds) { __atomic_store_n(&wait_seconds, seconds, __ATOMIC_SEQ_CST); }

static int deadline(struct timespec *ts) {
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += __atomic_load_n(&wait_seconds, __ATOMIC_SEQ_CST);
    return 0;
}

/* barrier: every rank of g arrives; 0, or -1 after wait_seconds or an abort */
static int barrier(struct group *g) {
    struct timespec ts;
    deadline(&ts);
    pthread_mutex_lock(&g->mu);
    unsigned gen = g->gen;
    if (++g->arrived == g->nranks) {
        g->arrived = 0;
        g->gen++;
        pthread_cond_broadcast(&g->cv);
    } else {
        while (gen == g->gen && !g->dead) {
            if (pthread_cond_timedwait(&g->cv, &g->mu, &ts) == ETIMEDOUT) break;
        }
    }
    int ok = gen != g->gen && !g->dead;
    pthread_mutex_unlock(&g->mu);
    return ok ? 0 : -1;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
    const unsigned char *b = (const unsigned char *)id.internal;
    uint64_t h;
    memcpy(&h, b + 120, 8);
    if (!comm || memcmp(b, "fakenccl", 8) != 0 || h != checksum(b, 120)) return INVALID_ARG;
    if (nranks < 1 || rank < 0 || rank >= nranks) return INVALID_ARG;
    pthread_mutex_lock(&reg);
    struct group *g = groups;
    while (g && memcmp(g->id, b, 128) != 0) g = g->next;
    if (!g) {
        g = calloc(1, sizeof *g);
        memcpy(g->id, b, 128);
        g->nranks = nranks;
        g->present = calloc(nranks, 1);
        g->slots = calloc(nranks, sizeof *g->slots);
        g->mail = calloc((size_t)nranks * nranks, sizeof *g->mail);
        pthread_mutex_init(&g->mu, NULL);
        pthread_cond_init(&g->cv, NULL);
        g->next = groups;
        groups = g;
    }
    if (g->nranks != nranks || g->present[rank]) {
        pthread_mutex_unlock(&reg);
        return INVALID_USAGE;
    }
    g->present[rank] = 1;
    g->joined++;
    pthread_mutex_unlock(&reg);
    if (barrier(g) != 0) return SYSTEM; /* the other ranks never came */
    struct ncclComm *c = calloc(1, sizeof *c);
    c->g = g;
    c->rank = rank;
    *comm = c;
    return OK;
}

static ncclResult_t leave(ncclComm_t c, int abort) {
    if (!c) return INVALID_ARG;
    struct group *g = c->g;
    pthread_mutex_lock(&reg);
    if (abort) {
        pthread_mutex_lock(&g->mu);
        g->dead = 1;
        pthread_cond_broadcast(&g->cv);
        pthread_mutex_unlock(&g->mu);
    }
    g->left++;
    /* the group stays registered: its memory is small and tests are short */
    pthread_mutex_unlock(&reg);
    free(c);
    return OK;
}

ncclResult_t ncclCommDestroy(ncclComm_t c) { return leave(c, 0); }
ncclResult_t ncclCommAbort(ncclComm_t c) { return leave(c, 1); }

ncclResult_t ncclCommGetAsyncError(ncclComm_t c, ncclResult_t *r) {
    if (!c || !r) return INVALID_ARG;
    *r = c->g->dead ? SYSTEM : OK;
    return OK;
}

ncclResult_t ncclCommCount(const ncclComm_t c, int *n) {
    if (!c || !n) return INVALID_ARG;
    *n = c->g->nranks;
    return OK;
}

ncclResult_t ncclCommUserRank(const ncclComm_t c, int *r) {
    if (!c || !r) return INVALID_ARG;
    *r = c->rank;
    return OK;
}

static size_t tsize(int t) { return t == T_INT32 || t == T_FLOAT32 ? 4 : 0; }

static ncclResult_t checkcall(ncclComm_t c, int type, void *stream) {
    if (!c) return INVALID_ARG;
    if (stream != NULL) return fail(c, INVALID_ARG, "fake: stream must be the legacy NULL stream");
    if (tsize(type) == 0) return fail(c, INVALID_ARG, "fake: only ncclInt32 and ncclFloat32");
    return OK;
}

/* reduce element i of the ranks' slots at offset off (elements) into out */
static ncclResult_t reduce(ncclComm_t c, int type, int op, size_t off, size_t count, void *out) {
    struct group *g = c->g;
    for (size_t i = 0; i < count; i++) {
        double acc = 0;
        for (int r = 0; r < g->nranks; r++) {
            double v = type == T_FLOAT32 ? ((const float *)g->slots[r])[off + i] : ((const int32_t *)g->slots[r])[off + i];
            if (r == 0) { acc = v; continue; }
            switch (op) {
            case OP_SUM: case OP_AVG: acc += v; break;
            case OP_PROD: acc *= v; break;
            case OP_MAX: if (v > acc) acc = v; break;
            case OP_MIN: if (v < acc) acc = v; break;
            default: return fail(c, INVALID_ARG, "fake: unknown reduction");
            }
        }
        if (op == OP_AVG) acc /= g->nranks;
        if (type == T_FLOAT32) ((float *)out)[i] = (float)acc;
        else ((int32_t *)out)[i] = (int32_t)acc;
    }
    return OK;
}

/* collective: publish send, compute into tmp, barrier, copy into recv */
static ncclResult_t finish(ncclComm_t c, ncclResult_t r, void *tmp, void *recv, size_t bytes) {
    /* every rank has read every slot before anyone writes recv (in place) */
    if (barrier(c->g) != 0) r = fail(c, SYSTEM, "fake: a peer did not finish the collective");
    if (r == OK && bytes) memcpy(recv, tmp, bytes);
    free(tmp);
    return r;
}

static ncclResult_t publish(ncclComm_t c, const void *send) {
    c->g->slots[c->rank] = send;
    if (barrier(c->g) != 0) return fail(c, SYSTEM, "fake: a peer did not join the collective");
    return OK;
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, int type, int op, ncclComm_t c, void *stream) {
    ncclResult_t r = checkcall(c, type, stream);
    if (r != OK) return r;
    if ((r = publish(c, send)) != OK) return r;
    void *tmp = malloc(count * tsize(type) + 1);
    r = reduce(c, type, op, 0, count, tmp);
    return finish(c, r, tmp, recv, count * tsize(type));
}

ncclResult_t ncclReduceScatter(const void *send, void *recv, size_t count, int type, int op, ncclComm_t c, void *stream) {
    ncclResult_t r = checkcall(c, type, stream);
    if (r != OK) return r;
    if ((r = publish(c, send)) != OK) return r;
    void *tmp = malloc(count * tsize(type) + 1);
    r = reduce(c, type, op, (size_t)c->rank * count, count, tmp);
    return finish(c, r, tmp, recv, count * tsize(type));
}

ncclResult_t ncclAllGather(const void *send, void *recv, size_t count, int type, ncclComm_t c, void *stream) {
    ncclResult_t r = checkcall(c, type, stream);
    if (r != OK) return r;
    if ((r = publish(c, send)) != OK) return r;
    size_t b = count * tsize(type);
    char *tmp = malloc(b * c->g->nranks + 1);
    for (int k = 0; k < c->g->nranks; k++) memcpy(tmp + k * b, c->g->slots[k], b);
    return finish(c, OK, tmp, recv, b * c->g->nranks);
}

ncclResult_t ncclBroadcast(const void *send, void *recv, size_t count, int type, int root, ncclComm_t c, void *stream) {
    ncclResult_t r = checkcall(c, type, stream);
    if (r != OK) return r;
    if (root < 0 || root >= c->g->nranks) return fail(c, INVALID_ARG, "fake: root out of range");
    if ((r = publish(c, send)) != OK) return r;
    size_t b = count * tsize(type);
    char *tmp = malloc(b + 1);
    memcpy(tmp, c->g->slots[root], b);
    return finish(c, OK, tmp, recv, b);
}

/* groups of point-to-point operations, per thread as in NCCL */
struct op {
    int send;
    void *buf;
    size_t bytes;
    int peer;
    ncclComm_t c;
};
static __thread int depth;
static __thread int nops;
static __thread struct op ops[MAX_OPS];
static __thread int broken; /* an error inside the group, reported at its end */

ncclResult_t ncclGroupStart(void) {
    depth++;
    return OK;
}

static ncclResult_t run_group(void) {
    ncclComm_t c = nops ? ops[0].c : NULL;
    int n = c ? c->g->nranks : 0;
    ncclResult_t r = OK;
    for (int i = 0; i < nops && r == OK; i++) {
        if (ops[i].c != c) r = fail(c, INVALID_USAGE, "fake: one communicator per group");
        else if (ops[i].send) {
            struct mail *m = &c->g->mail[c->rank * n + ops[i].peer];
            if (m->set) r = fail(c, INVALID_USAGE, "fake: two sends to one peer in a group");
            m->buf = ops[i].buf, m->bytes = ops[i].bytes, m->set = 1;
        }
    }
    if (c && barrier(c->g) != 0 && r == OK) r = fail(c, SYSTEM, "fake: a peer did not join the group");
    for (int i = 0; i < nops && r == OK; i++) {
        if (ops[i].send) continue;
        struct mail *m = &c->g->mail[ops[i].peer * n + c->rank];
        if (!m->set) r = fail(c, INVALID_USAGE, "fake: a receive from a peer that sent nothing");
        else if (m->bytes != ops[i].bytes) r = fail(c, INVALID_USAGE, "fake: send and receive sizes differ");
        else memcpy(ops[i].buf, m->buf, m->bytes);
    }
    if (c && barrier(c->g) != 0 && r == OK) r = fail(c, SYSTEM, "fake: a peer did not finish the group");
    if (c)
        for (int k = 0; k < n; k++) c->g->mail[c->rank * n + k].set = 0;
    nops = 0;
    return r;
}

ncclResult_t ncclGroupEnd(void) {
    if (depth == 0) return INVALID_USAGE;
    if (--depth > 0) return OK;
    ncclResult_t r = run_group();
    if (broken) r = broken;
    broken = 0;
    return r;
}

static ncclResult_t p2p(int send, void *buf, size_t count, int type, int peer, ncclComm_t c, void *stream) {
    ncclResult_t r = checkcall(c, type, stream);
    if (r == OK && (peer < 0 || peer >= c->g->nranks)) r = fail(c, INVALID_ARG, "fake: peer out of range");
    if (r == OK && nops == MAX_OPS) r = fail(c, INTERNAL, "fake: too many operations in a group");
    if (r != OK) {
        if (depth) broken = r;
        return r;
    }
    ops[nops++] = (struct op){send, buf, count * tsize(type), peer, c};
    if (depth == 0) return run_group();
    return OK;
}

ncclResult_t ncclSend(const void *buf, size_t count, int type, int peer, ncclComm_t c, void *stream) {
    return p2p(1, (void *)buf, count, type, peer, c, stream);
}

ncclResult_t ncclRecv(void *buf, size_t count, int type, int peer, ncclComm_t c, void *stream) {
    return p2p(0, buf, count, type, peer, c, stream);
}
