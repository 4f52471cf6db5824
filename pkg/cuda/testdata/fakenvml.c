/*
 * fakenvml: a stand-in for libnvidia-ml.so.1 with the part of NVML's C
 * interface the bindings use (nvml.go), for their tests without a GPU.
 * Two GPUs: GPU-00000000-0000-0000-0000-000000000001 and ...02, busy 40%
 * and 75%, with 1 and 2 GiB of 80 GiB in use. Written for these tests.
 *
 * Build: cc -shared -fPIC -O1 -o libnvidia-ml.so.1 fakenvml.c
 */
#include <string.h>

typedef int nvmlReturn_t;
typedef struct { unsigned int gpu; unsigned int memory; } nvmlUtilization_t;
typedef struct { unsigned long long total; unsigned long long free; unsigned long long used; } nvmlMemory_t;
struct dev { const char *uuid; unsigned int util; unsigned long long used; };
typedef struct dev *nvmlDevice_t;

static struct dev devs[] = {
    {"GPU-00000000-0000-0000-0000-000000000001", 40, 1ull << 30},
    {"GPU-00000000-0000-0000-0000-000000000002", 75, 2ull << 30},
};
static int inits;

nvmlReturn_t nvmlInit_v2(void) { inits++; return 0; }
nvmlReturn_t nvmlShutdown(void) { return inits-- > 0 ? 0 : 1; }

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 6: return "Not Found";
    }
    return "Unknown Error";
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *d) {
    if (inits <= 0) return 1;
    if (!uuid || !d) return 2;
    for (unsigned i = 0; i < sizeof devs / sizeof devs[0]; i++)
        if (strcmp(uuid, devs[i].uuid) == 0) { *d = &devs[i]; return 0; }
    return 6;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) {
    if (inits <= 0) return 1;
    if (!d || !u) return 2;
    u->gpu = d->util;
    u->memory = d->util / 2;
    return 0;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m) {
    if (inits <= 0) return 1;
    if (!d || !m) return 2;
    m->total = 80ull << 30;
    m->used = d->used;
    m->free = m->total - m->used;
    return 0;
}
