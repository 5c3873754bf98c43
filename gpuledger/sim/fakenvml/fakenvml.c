/* A fake libnvidia-ml.so.1 for tests: the real nvidia-ml-py (pynvml) loads it through ctypes
 * and every call the agent makes crosses the same C ABI as on a GPU node.
 *
 * It answers from a scenario file (a text snapshot of one node that gpuledger.sim.fakenvml
 * writes from the fleet simulator, atomically, once per tick) named by the environment variable
 * GPULEDGER_FAKE_NVML_SCENARIO when nvmlInit runs. The file is re-read whenever it changes
 * (inode, size or mtime), so a writer in another process drives a running agent.
 *
 * Signatures, struct layouts, version words and return codes follow NVIDIA's nvml.h
 * (API version 13, as shipped in github.com/NVIDIA/go-nvml gen/nvml/nvml.h); only the
 * functions gpuledger/agent/nvml.py reaches through pynvml are implemented. A symbol can be
 * left out at link time (a linker version script, see gpuledger/sim/fakenvml/__init__.py) to
 * play an older driver that lacks it: pynvml then raises NVML_ERROR_FUNCTION_NOT_FOUND.
 *
 * Scenario lines (whitespace-separated; later scalar lines override earlier ones):
 *   driver <version>            now <us>                  fail_global <function> <code>
 *   gpu <index>                 starts a physical GPU; the following lines describe it
 *   mig <index>                 starts a MIG device of the current GPU (until the next gpu/mig)
 *   uuid <s>  name <rest of line>  pci <busId>  mem <total> <reserved> <free> <used>  (bytes)
 *   energy <mJ>  power <mW>  temp <C>  clocks <sm MHz> <mem MHz>  mig_mode <current> <pending>
 *   max_mig <n>  max_slices <n>  gi <id>  ci <id>  attrs <slices> <memory MiB>
 *   proc <pid> <used bytes, -1 unknown>   mps <pid> <used bytes>
 *   usamp <ts us> <percent>     msamp <ts us> <percent>   (GPU / memory utilization samples)
 *   psamp <pid> <ts us> <sm> <mem> <enc> <dec>             (per-process samples, percent)
 *   enc <percent> <period us>  dec <percent> <period us>  pcie_replay <n>
 *   remapped <correctable> <uncorrectable> <pending> <failure>   clocks_event <bitmask>
 *   field <id> <valueType> <value>   xid <ts us> <xid>   lost   (every call: GPU_IS_LOST)
 *   fail <function>[:<sampling type>] <nvmlReturn_t>        (this device's call returns it)
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- nvml.h subset (layouts as in nvml.h, API version 13) ------------------------------ */

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0, NVML_ERROR_UNINITIALIZED = 1, NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3, NVML_ERROR_NOT_FOUND = 6, NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9, NVML_ERROR_TIMEOUT = 10, NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25, NVML_ERROR_UNKNOWN = 999
};
typedef struct fake_dev *nvmlDevice_t;
typedef struct fake_event_set *nvmlEventSet_t;

typedef union { double dVal; unsigned int uiVal; unsigned long ulVal; unsigned long long ullVal;
                long long sllVal; int siVal; unsigned short usVal; } nvmlValue_t;
typedef struct { unsigned long long timeStamp; nvmlValue_t sampleValue; } nvmlSample_t;
typedef struct { char busIdLegacy[16]; unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
                 char busId[32]; } nvmlPciInfo_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; } nvmlProcessInfo_v1_t; /* pre-R450 */
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; unsigned int gpuInstanceId;
                 unsigned int computeInstanceId; } nvmlProcessInfo_v2_t;
typedef struct { unsigned int pid; unsigned long long timeStamp; unsigned int smUtil, memUtil, encUtil,
                 decUtil; } nvmlProcessUtilizationSample_t;
typedef struct { unsigned long long timeStamp; unsigned int pid, smUtil, memUtil, encUtil, decUtil, jpgUtil,
                 ofaUtil; } nvmlProcessUtilizationInfo_v1_t;
typedef struct { unsigned int version; unsigned int processSamplesCount; unsigned long long lastSeenTimeStamp;
                 nvmlProcessUtilizationInfo_v1_t *procUtilArray; } nvmlProcessesUtilizationInfo_v1_t;
typedef struct { unsigned int multiprocessorCount, sharedCopyEngineCount, sharedDecoderCount,
                 sharedEncoderCount, sharedJpegCount, sharedOfaCount, gpuInstanceSliceCount,
                 computeInstanceSliceCount; unsigned long long memorySizeMB; } nvmlDeviceAttributes_t;
typedef struct { unsigned int version, id, isP2pSupported, sliceCount, instanceCount, multiprocessorCount,
                 copyEngineCount, decoderCount, encoderCount, jpegCount, ofaCount;
                 unsigned long long memorySizeMB; char name[96]; } nvmlGpuInstanceProfileInfo_v2_t;
typedef struct { unsigned int fieldId, scopeId; long long timestamp, latencyUsec; int valueType;
                 nvmlReturn_t nvmlReturn; nvmlValue_t value; } nvmlFieldValue_t;
typedef struct { nvmlDevice_t device; unsigned long long eventType, eventData; unsigned int gpuInstanceId,
                 computeInstanceId; } nvmlEventData_t;

#define NVML_STRUCT_VERSION(type, ver) ((unsigned int)(sizeof(type) | ((ver) << 24U)))
#define NVML_VALUE_NOT_AVAILABLE_ULL 0xFFFFFFFFFFFFFFFFULL
#define EVENT_XID 0x8ULL /* nvmlEventTypeXidCriticalError */

/* ---- the scenario ------------------------------------------------------------------------- */

#define MAX_GPUS 64
#define MAX_MIG 8
#define MAX_FAILS 32

typedef struct { unsigned long long ts; unsigned int v; } vsample;
typedef struct { unsigned int pid; unsigned long long ts; unsigned int sm, mem, enc, dec; } psample;
typedef struct { unsigned int pid; unsigned long long mem; } proc;
typedef struct { unsigned int id; int type; char text[64]; } field;
typedef struct { unsigned long long ts, xid; } xid_event;
/* growable arrays: n items of the type, cap allocated */
#define VEC(T) struct { T *v; size_t n, cap; }
#define PUSH(vec, item) do { if ((vec).n == (vec).cap) { (vec).cap = (vec).cap ? 2 * (vec).cap : 64; \
    (vec).v = realloc((vec).v, (vec).cap * sizeof(*(vec).v)); } (vec).v[(vec).n++] = (item); } while (0)

struct fake_dev {
    int present, gpu, mig; /* mig -1: the physical GPU */
    int lost;
    char uuid[96], name[96], pci[32];
    unsigned long long mem_total, mem_reserved, mem_free, mem_used, energy_mj;
    unsigned int power_mw, temp_c, clock_sm, clock_mem, mig_cur, mig_pending, max_mig, max_slices;
    unsigned int gi, ci, slices, enc, enc_period, dec, dec_period, pcie_replay, remapped[4];
    unsigned long long memory_mb, clocks_event;
    VEC(proc) procs; VEC(proc) mps; VEC(vsample) usamp; VEC(vsample) msamp; VEC(psample) psamp;
    VEC(field) fields; VEC(xid_event) xids;
    char fail_fn[MAX_FAILS][64]; int fail_code[MAX_FAILS]; int n_fail;
};

struct fake_event_set { int registered[MAX_GPUS]; unsigned long long delivered_us[MAX_GPUS]; };

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct fake_dev gpus[MAX_GPUS];
static struct fake_dev migs[MAX_GPUS][MAX_MIG];
static int n_gpus, init_refs;
static char driver[80] = "0.0";
static unsigned long long now_us;
static char global_fail_fn[MAX_FAILS][64]; static int global_fail_code[MAX_FAILS]; static int n_global_fail;
static char path[4096];
static char next_path[4096]; /* test hook: the scenario to switch to after the next size query */
static struct stat seen;
static struct { char name[64]; unsigned long n; } calls[128];
static int n_calls;

static void count_call(const char *fn) {
    for (int i = 0; i < n_calls; i++)
        if (!strcmp(calls[i].name, fn)) { calls[i].n++; return; }
    if (n_calls < 128) { snprintf(calls[n_calls].name, 64, "%s", fn); calls[n_calls++].n = 1; }
}

static void reset_dev(struct fake_dev *d, int gpu, int mig) {
    d->present = 0; d->gpu = gpu; d->mig = mig; d->lost = 0; d->n_fail = 0;
    d->uuid[0] = d->name[0] = d->pci[0] = 0;
    d->mem_total = d->mem_reserved = d->mem_free = d->mem_used = d->energy_mj = 0;
    d->power_mw = d->temp_c = d->clock_sm = d->clock_mem = d->mig_cur = d->mig_pending = 0;
    d->max_mig = d->max_slices = d->gi = d->ci = d->slices = d->enc = d->enc_period = 0;
    d->dec = d->dec_period = d->pcie_replay = 0;
    memset(d->remapped, 0, sizeof d->remapped);
    d->memory_mb = d->clocks_event = 0;
    d->procs.n = d->mps.n = d->usamp.n = d->msamp.n = d->psamp.n = d->fields.n = d->xids.n = 0;
}

static void parse_line(char *line, struct fake_dev **cur) {
    char key[64];
    line[strcspn(line, "\r\n")] = 0;
    if (sscanf(line, "%63s", key) != 1 || key[0] == '#') return;
    const char *args = line + strlen(key) + (line[strlen(key)] ? 1 : 0);
    while (*args == ' ') args++;
    struct fake_dev *d = *cur;
    int i, j;
    if (!strcmp(key, "driver")) { snprintf(driver, sizeof driver, "%s", args); return; }
    if (!strcmp(key, "now")) { now_us = strtoull(args, NULL, 10); return; }
    if (!strcmp(key, "fail_global") && n_global_fail < MAX_FAILS) {
        if (sscanf(args, "%63s %d", global_fail_fn[n_global_fail], &global_fail_code[n_global_fail]) == 2)
            n_global_fail++;
        return;
    }
    if (!strcmp(key, "gpu")) {
        i = atoi(args);
        if (i < 0 || i >= MAX_GPUS) { *cur = NULL; return; }
        *cur = &gpus[i]; gpus[i].present = 1;
        if (i + 1 > n_gpus) n_gpus = i + 1;
        return;
    }
    if (!strcmp(key, "mig")) {
        j = atoi(args);
        if (!d || d->mig >= 0) d = d ? &gpus[d->gpu] : NULL;
        if (!d || j < 0 || j >= MAX_MIG) { *cur = NULL; return; }
        *cur = &migs[d->gpu][j]; (*cur)->present = 1;
        return;
    }
    if (!d) return;
    if (!strcmp(key, "uuid")) snprintf(d->uuid, sizeof d->uuid, "%s", args);
    else if (!strcmp(key, "name")) snprintf(d->name, sizeof d->name, "%s", args);
    else if (!strcmp(key, "pci")) snprintf(d->pci, sizeof d->pci, "%s", args);
    else if (!strcmp(key, "mem"))
        sscanf(args, "%llu %llu %llu %llu", &d->mem_total, &d->mem_reserved, &d->mem_free, &d->mem_used);
    else if (!strcmp(key, "energy")) d->energy_mj = strtoull(args, NULL, 10);
    else if (!strcmp(key, "power")) d->power_mw = (unsigned int)strtoul(args, NULL, 10);
    else if (!strcmp(key, "temp")) d->temp_c = (unsigned int)strtoul(args, NULL, 10);
    else if (!strcmp(key, "clocks")) sscanf(args, "%u %u", &d->clock_sm, &d->clock_mem);
    else if (!strcmp(key, "mig_mode")) sscanf(args, "%u %u", &d->mig_cur, &d->mig_pending);
    else if (!strcmp(key, "max_mig")) d->max_mig = (unsigned int)atoi(args);
    else if (!strcmp(key, "max_slices")) d->max_slices = (unsigned int)atoi(args);
    else if (!strcmp(key, "gi")) d->gi = (unsigned int)atoi(args);
    else if (!strcmp(key, "ci")) d->ci = (unsigned int)atoi(args);
    else if (!strcmp(key, "attrs")) sscanf(args, "%u %llu", &d->slices, &d->memory_mb);
    else if (!strcmp(key, "proc") || !strcmp(key, "mps")) {
        long long mem; proc p;
        if (sscanf(args, "%u %lld", &p.pid, &mem) != 2) return;
        p.mem = mem < 0 ? NVML_VALUE_NOT_AVAILABLE_ULL : (unsigned long long)mem;
        if (key[0] == 'p') PUSH(d->procs, p); else PUSH(d->mps, p);
    } else if (!strcmp(key, "usamp") || !strcmp(key, "msamp")) {
        vsample s;
        if (sscanf(args, "%llu %u", &s.ts, &s.v) != 2) return;
        if (key[0] == 'u') PUSH(d->usamp, s); else PUSH(d->msamp, s);
    } else if (!strcmp(key, "psamp")) {
        psample s;
        if (sscanf(args, "%u %llu %u %u %u %u", &s.pid, &s.ts, &s.sm, &s.mem, &s.enc, &s.dec) == 6)
            PUSH(d->psamp, s);
    } else if (!strcmp(key, "enc")) sscanf(args, "%u %u", &d->enc, &d->enc_period);
    else if (!strcmp(key, "dec")) sscanf(args, "%u %u", &d->dec, &d->dec_period);
    else if (!strcmp(key, "pcie_replay")) d->pcie_replay = (unsigned int)strtoul(args, NULL, 10);
    else if (!strcmp(key, "remapped"))
        sscanf(args, "%u %u %u %u", &d->remapped[0], &d->remapped[1], &d->remapped[2], &d->remapped[3]);
    else if (!strcmp(key, "clocks_event")) d->clocks_event = strtoull(args, NULL, 10);
    else if (!strcmp(key, "field")) {
        field f;
        if (sscanf(args, "%u %d %63s", &f.id, &f.type, f.text) == 3) PUSH(d->fields, f);
    } else if (!strcmp(key, "xid")) {
        xid_event e;
        if (sscanf(args, "%llu %llu", &e.ts, &e.xid) == 2) PUSH(d->xids, e);
    } else if (!strcmp(key, "lost")) d->lost = 1;
    else if (!strcmp(key, "fail") && d->n_fail < MAX_FAILS) {
        if (sscanf(args, "%63s %d", d->fail_fn[d->n_fail], &d->fail_code[d->n_fail]) == 2) d->n_fail++;
    }
}

/* Re-read the scenario when the file changed; keeps device structs (handles) in place. */
static nvmlReturn_t reload(void) {
    struct stat st;
    if (stat(path, &st) != 0) return NVML_ERROR_DRIVER_NOT_LOADED;
    if (st.st_ino == seen.st_ino && st.st_size == seen.st_size && st.st_mtim.tv_sec == seen.st_mtim.tv_sec
        && st.st_mtim.tv_nsec == seen.st_mtim.tv_nsec)
        return NVML_SUCCESS;
    FILE *f = fopen(path, "r");
    if (!f) return NVML_ERROR_DRIVER_NOT_LOADED;
    for (int i = 0; i < MAX_GPUS; i++) {
        reset_dev(&gpus[i], i, -1);
        for (int m = 0; m < MAX_MIG; m++) reset_dev(&migs[i][m], i, m);
    }
    n_gpus = 0; n_global_fail = 0;
    char *line = NULL; size_t cap = 0;
    struct fake_dev *cur = NULL;
    while (getline(&line, &cap, f) > 0) parse_line(line, &cur);
    free(line);
    fclose(f);
    seen = st;
    return NVML_SUCCESS;
}

/* A size query just answered INSUFFICIENT_SIZE: if a test asked for it, the node changes now,
 * between the caller's two calls (processes start, samples arrive), as it can on a real driver. */
static nvmlReturn_t size_query(void) {
    if (next_path[0]) {
        snprintf(path, sizeof path, "%s", next_path);
        next_path[0] = 0;
        memset(&seen, 0, sizeof seen);
    }
    return NVML_ERROR_INSUFFICIENT_SIZE;
}

static int global_fail(const char *fn) {
    for (int i = 0; i < n_global_fail; i++)
        if (!strcmp(global_fail_fn[i], fn)) return global_fail_code[i];
    return 0;
}

static int dev_fail(struct fake_dev *d, const char *fn) {
    for (int i = 0; i < d->n_fail; i++)
        if (!strcmp(d->fail_fn[i], fn)) return d->fail_code[i];
    return 0;
}

/* Every entry point: lock, count, check init, reload, check the global fault table. */
static nvmlReturn_t enter(const char *fn, int need_init) {
    pthread_mutex_lock(&lock);
    count_call(fn);
    if (need_init && init_refs <= 0) return NVML_ERROR_UNINITIALIZED;
    if (need_init) {
        nvmlReturn_t rc = reload();
        if (rc) return rc;
    }
    return global_fail(fn);
}

/* enter() plus the device's own checks: a valid handle, not lost, no injected failure. */
static nvmlReturn_t enter_dev(const char *fn, nvmlDevice_t d) {
    nvmlReturn_t rc = enter(fn, 1);
    if (rc) return rc;
    if (!d || !d->present) return NVML_ERROR_INVALID_ARGUMENT;
    if (d->lost || gpus[d->gpu].lost) return NVML_ERROR_GPU_IS_LOST;
    return dev_fail(d, fn);
}

#define LEAVE(rc) do { nvmlReturn_t rc_ = (rc); pthread_mutex_unlock(&lock); return rc_; } while (0)
#define DEV_CALL(fn, d) nvmlReturn_t rc = enter_dev(fn, d); if (rc) LEAVE(rc)

/* ---- system ------------------------------------------------------------------------------- */

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    nvmlReturn_t rc = enter("nvmlInitWithFlags", 0);
    if (rc) LEAVE(rc);
    const char *p = getenv("GPULEDGER_FAKE_NVML_SCENARIO");
    if (!p || !*p) LEAVE(NVML_ERROR_DRIVER_NOT_LOADED);
    snprintf(path, sizeof path, "%s", p);
    memset(&seen, 0, sizeof seen);
    rc = reload();
    if (rc) LEAVE(rc);
    init_refs++;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    nvmlReturn_t rc = enter("nvmlShutdown", 1);
    if (rc) LEAVE(rc);
    init_refs--;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    nvmlReturn_t rc = enter("nvmlSystemGetDriverVersion", 1);
    if (rc) LEAVE(rc);
    if (!version) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (strlen(driver) + 1 > length) LEAVE(NVML_ERROR_INSUFFICIENT_SIZE);
    snprintf(version, length, "%s", driver);
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    nvmlReturn_t rc = enter("nvmlDeviceGetCount_v2", 1);
    if (rc) LEAVE(rc);
    if (!count) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *count = (unsigned int)n_gpus;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    nvmlReturn_t rc = enter("nvmlDeviceGetHandleByIndex_v2", 1);
    if (rc) LEAVE(rc);
    if (!device || index >= (unsigned int)n_gpus || !gpus[index].present) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *device = &gpus[index];
    LEAVE(gpus[index].lost ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS);
}

/* ---- identity ------------------------------------------------------------------------------ */

static nvmlReturn_t copy_str(const char *s, char *out, unsigned int length) {
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(s) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    snprintf(out, length, "%s", s);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int length) {
    DEV_CALL("nvmlDeviceGetUUID", d);
    LEAVE(copy_str(d->uuid, uuid, length));
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int length) {
    DEV_CALL("nvmlDeviceGetName", d);
    LEAVE(copy_str(d->name, name, length));
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *pci) {
    DEV_CALL("nvmlDeviceGetPciInfo_v3", d);
    if (!pci) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    memset(pci, 0, sizeof *pci);
    snprintf(pci->busId, sizeof pci->busId, "%s", d->pci);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%s", d->pci + (strlen(d->pci) > 12 ? 4 : 0));
    sscanf(d->pci, "%x:%x:%x", &pci->domain, &pci->bus, &pci->device);
    pci->pciDeviceId = 0x233010DE; /* H100 SXM5 device id | NVIDIA vendor id */
    LEAVE(NVML_SUCCESS);
}

/* ---- memory, energy, power, clocks ------------------------------------------------------- */

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m) {
    DEV_CALL("nvmlDeviceGetMemoryInfo", d);
    if (!m) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    m->total = d->mem_total; m->free = d->mem_free;
    m->used = d->mem_used + d->mem_reserved; /* v1: "sum of reserved and allocated" */
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *m) {
    DEV_CALL("nvmlDeviceGetMemoryInfo_v2", d);
    if (!m) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (m->version != NVML_STRUCT_VERSION(nvmlMemory_v2_t, 2)) LEAVE(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    m->total = d->mem_total; m->reserved = d->mem_reserved; m->free = d->mem_free; m->used = d->mem_used;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t d, unsigned long long *energy) {
    DEV_CALL("nvmlDeviceGetTotalEnergyConsumption", d);
    if (!energy) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *energy = d->energy_mj;
    LEAVE(NVML_SUCCESS);
}

#define UINT_GETTER(fn, expr) \
    nvmlReturn_t fn(nvmlDevice_t d, unsigned int *out) { \
        DEV_CALL(#fn, d); \
        if (!out) LEAVE(NVML_ERROR_INVALID_ARGUMENT); \
        *out = (expr); \
        LEAVE(NVML_SUCCESS); \
    }
UINT_GETTER(nvmlDeviceGetPowerUsage, d->power_mw)
UINT_GETTER(nvmlDeviceGetPcieReplayCounter, d->pcie_replay)
UINT_GETTER(nvmlDeviceGetMaxMigDeviceCount, d->max_mig)
UINT_GETTER(nvmlDeviceGetGpuInstanceId, d->gi)
UINT_GETTER(nvmlDeviceGetComputeInstanceId, d->ci)

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned int *temp) {
    DEV_CALL("nvmlDeviceGetTemperature", d);
    if (!temp || sensor != 0 /* NVML_TEMPERATURE_GPU */) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *temp = d->temp_c;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t d, int type, unsigned int *clock) {
    DEV_CALL("nvmlDeviceGetClockInfo", d);
    if (!clock) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (type == 1 /* NVML_CLOCK_SM */) *clock = d->clock_sm;
    else if (type == 2 /* NVML_CLOCK_MEM */) *clock = d->clock_mem;
    else LEAVE(NVML_ERROR_NOT_SUPPORTED);
    LEAVE(NVML_SUCCESS);
}

/* ---- sample buffers ------------------------------------------------------------------------ */

nvmlReturn_t nvmlDeviceGetSamples(nvmlDevice_t d, int type, unsigned long long lastSeenTimeStamp,
                                  int *sampleValType, unsigned int *sampleCount, nvmlSample_t *samples) {
    nvmlReturn_t rc = enter_dev("nvmlDeviceGetSamples", d);
    char key[64];
    snprintf(key, sizeof key, "nvmlDeviceGetSamples:%d", type);
    if (!rc && d) rc = dev_fail(d, key);
    if (rc) LEAVE(rc);
    if (!sampleValType || !sampleCount) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (type != 1 && type != 2) LEAVE(NVML_ERROR_NOT_SUPPORTED);
    const vsample *v = type == 1 ? d->usamp.v : d->msamp.v;
    size_t n = type == 1 ? d->usamp.n : d->msamp.n, newer = 0, w = 0;
    for (size_t i = 0; i < n; i++) newer += v[i].ts > lastSeenTimeStamp;
    if (!newer) LEAVE(NVML_ERROR_NOT_FOUND);
    *sampleValType = 1; /* NVML_VALUE_TYPE_UNSIGNED_INT */
    if (!samples) { *sampleCount = (unsigned int)newer; LEAVE(NVML_SUCCESS); }
    if (*sampleCount == 0) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    for (size_t i = 0; i < n && w < *sampleCount; i++) /* oldest first; the rest come next call */
        if (v[i].ts > lastSeenTimeStamp) {
            samples[w].timeStamp = v[i].ts;
            samples[w].sampleValue.ullVal = 0;
            samples[w++].sampleValue.uiVal = v[i].v;
        }
    *sampleCount = (unsigned int)w;
    LEAVE(NVML_SUCCESS);
}

static size_t psamples_after(struct fake_dev *d, unsigned long long since) {
    size_t k = 0;
    for (size_t i = 0; i < d->psamp.n; i++) k += d->psamp.v[i].ts > since;
    return k;
}

nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t d, nvmlProcessUtilizationSample_t *utilization,
                                             unsigned int *processSamplesCount,
                                             unsigned long long lastSeenTimeStamp) {
    DEV_CALL("nvmlDeviceGetProcessUtilization", d);
    if (!processSamplesCount) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    size_t n = psamples_after(d, lastSeenTimeStamp), w = 0;
    if (!n) LEAVE(NVML_ERROR_NOT_FOUND);
    if (!utilization || *processSamplesCount < n) { *processSamplesCount = (unsigned int)n; LEAVE(size_query()); }
    for (size_t i = 0; i < d->psamp.n; i++) {
        const psample *s = &d->psamp.v[i];
        if (s->ts <= lastSeenTimeStamp) continue;
        utilization[w++] = (nvmlProcessUtilizationSample_t){s->pid, s->ts, s->sm, s->mem, s->enc, s->dec};
    }
    *processSamplesCount = (unsigned int)w;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetProcessesUtilizationInfo(nvmlDevice_t d, nvmlProcessesUtilizationInfo_v1_t *info) {
    DEV_CALL("nvmlDeviceGetProcessesUtilizationInfo", d);
    if (!info) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (info->version != NVML_STRUCT_VERSION(nvmlProcessesUtilizationInfo_v1_t, 1))
        LEAVE(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    size_t n = psamples_after(d, info->lastSeenTimeStamp), w = 0;
    if (!n) LEAVE(NVML_ERROR_NOT_FOUND);
    if (!info->procUtilArray || info->processSamplesCount < n) {
        info->processSamplesCount = (unsigned int)n;
        LEAVE(size_query());
    }
    for (size_t i = 0; i < d->psamp.n; i++) {
        const psample *s = &d->psamp.v[i];
        if (s->ts <= info->lastSeenTimeStamp) continue;
        info->procUtilArray[w++] = (nvmlProcessUtilizationInfo_v1_t){s->ts, s->pid, s->sm, s->mem, s->enc,
                                                                      s->dec, 0, 0};
    }
    info->processSamplesCount = (unsigned int)w;
    LEAVE(NVML_SUCCESS);
}

/* ---- processes ------------------------------------------------------------------------------ */

static nvmlReturn_t list_procs(const proc *p, size_t n, struct fake_dev *d, unsigned int *count,
                               nvmlProcessInfo_v2_t *infos) {
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    if (*count < n || (!infos && n)) { *count = (unsigned int)n; return size_query(); }
    for (size_t i = 0; i < n; i++)
        infos[i] = (nvmlProcessInfo_v2_t){p[i].pid, p[i].mem, d->mig >= 0 ? d->gi : 0xFFFFFFFFu,
                                          d->mig >= 0 ? d->ci : 0xFFFFFFFFu};
    *count = (unsigned int)n;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *count,
                                                     nvmlProcessInfo_v2_t *infos) {
    DEV_CALL("nvmlDeviceGetComputeRunningProcesses_v3", d);
    LEAVE(list_procs(d->procs.v, d->procs.n, d, count, infos));
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *count,
                                                     nvmlProcessInfo_v2_t *infos) {
    DEV_CALL("nvmlDeviceGetComputeRunningProcesses_v2", d);
    LEAVE(list_procs(d->procs.v, d->procs.n, d, count, infos));
}

nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *count,
                                                        nvmlProcessInfo_v2_t *infos) {
    DEV_CALL("nvmlDeviceGetMPSComputeRunningProcesses_v3", d);
    LEAVE(list_procs(d->mps.v, d->mps.n, d, count, infos));
}

nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *count,
                                                        nvmlProcessInfo_v2_t *infos) {
    DEV_CALL("nvmlDeviceGetMPSComputeRunningProcesses_v2", d);
    LEAVE(list_procs(d->mps.v, d->mps.n, d, count, infos));
}

/* The original, unsuffixed symbols (drivers before R450) fill the 16-byte v1 rows: no MIG ids. */
static nvmlReturn_t list_procs_v1(const proc *p, size_t n, unsigned int *count, nvmlProcessInfo_v1_t *infos) {
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    if (*count < n || (!infos && n)) { *count = (unsigned int)n; return size_query(); }
    for (size_t i = 0; i < n; i++) infos[i] = (nvmlProcessInfo_v1_t){p[i].pid, p[i].mem};
    *count = (unsigned int)n;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_v1_t *infos) {
    DEV_CALL("nvmlDeviceGetComputeRunningProcesses", d);
    LEAVE(list_procs_v1(d->procs.v, d->procs.n, count, infos));
}

nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses(nvmlDevice_t d, unsigned int *count,
                                                     nvmlProcessInfo_v1_t *infos) {
    DEV_CALL("nvmlDeviceGetMPSComputeRunningProcesses", d);
    LEAVE(list_procs_v1(d->mps.v, d->mps.n, count, infos));
}

/* ---- MIG ------------------------------------------------------------------------------------ */

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t d, unsigned int *current, unsigned int *pending) {
    DEV_CALL("nvmlDeviceGetMigMode", d);
    if (!current || !pending) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *current = d->mig_cur; *pending = d->mig_pending;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t d, unsigned int index, nvmlDevice_t *mig) {
    DEV_CALL("nvmlDeviceGetMigDeviceHandleByIndex", d);
    if (!mig || d->mig >= 0) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (!d->mig_cur) LEAVE(NVML_ERROR_NOT_SUPPORTED);
    if (index >= MAX_MIG || !migs[d->gpu][index].present) LEAVE(NVML_ERROR_NOT_FOUND);
    *mig = &migs[d->gpu][index];
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetAttributes_v2(nvmlDevice_t d, nvmlDeviceAttributes_t *attrs) {
    DEV_CALL("nvmlDeviceGetAttributes_v2", d);
    if (!attrs) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    memset(attrs, 0, sizeof *attrs);
    attrs->gpuInstanceSliceCount = attrs->computeInstanceSliceCount = d->slices;
    attrs->memorySizeMB = d->memory_mb;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetGpuInstanceProfileInfoV(nvmlDevice_t d, unsigned int profile,
                                                  nvmlGpuInstanceProfileInfo_v2_t *info) {
    DEV_CALL("nvmlDeviceGetGpuInstanceProfileInfoV", d);
    if (!info) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (info->version != NVML_STRUCT_VERSION(nvmlGpuInstanceProfileInfo_v2_t, 2))
        LEAVE(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    /* profile ids from nvml.h: 4_SLICE 0x3, 7_SLICE 0x4, 8_SLICE 0x5 */
    unsigned int slices = profile == 3 ? 4 : profile == 4 ? 7 : profile == 5 ? 8 : 0;
    if (!slices || slices != d->max_slices) LEAVE(NVML_ERROR_NOT_SUPPORTED);
    info->id = profile; info->sliceCount = slices; info->instanceCount = 1;
    LEAVE(NVML_SUCCESS);
}

/* ---- health ----------------------------------------------------------------------------------- */

nvmlReturn_t nvmlDeviceGetEncoderUtilization(nvmlDevice_t d, unsigned int *util, unsigned int *period) {
    DEV_CALL("nvmlDeviceGetEncoderUtilization", d);
    if (!util || !period) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *util = d->enc; *period = d->enc_period;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetDecoderUtilization(nvmlDevice_t d, unsigned int *util, unsigned int *period) {
    DEV_CALL("nvmlDeviceGetDecoderUtilization", d);
    if (!util || !period) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *util = d->dec; *period = d->dec_period;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t d, int valuesCount, nvmlFieldValue_t *values) {
    DEV_CALL("nvmlDeviceGetFieldValues", d);
    if (!values || valuesCount < 0) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    for (int k = 0; k < valuesCount; k++) {
        nvmlFieldValue_t *out = &values[k];
        out->timestamp = (long long)now_us; out->latencyUsec = 0;
        out->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        for (size_t i = 0; i < d->fields.n; i++) {
            const field *f = &d->fields.v[i];
            if (f->id != out->fieldId) continue;
            out->valueType = f->type; out->nvmlReturn = NVML_SUCCESS; out->value.ullVal = 0;
            switch (f->type) {
            case 0: out->value.dVal = strtod(f->text, NULL); break;
            case 1: out->value.uiVal = (unsigned int)strtoul(f->text, NULL, 10); break;
            case 2: out->value.ulVal = strtoul(f->text, NULL, 10); break;
            case 3: out->value.ullVal = strtoull(f->text, NULL, 10); break;
            case 4: out->value.sllVal = strtoll(f->text, NULL, 10); break;
            case 5: out->value.siVal = (int)strtol(f->text, NULL, 10); break;
            default: out->value.ullVal = strtoull(f->text, NULL, 10); break;
            }
        }
    }
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t d, unsigned int *corr, unsigned int *unc,
                                       unsigned int *pending, unsigned int *failure) {
    DEV_CALL("nvmlDeviceGetRemappedRows", d);
    if (!corr || !unc || !pending || !failure) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *corr = d->remapped[0]; *unc = d->remapped[1]; *pending = d->remapped[2]; *failure = d->remapped[3];
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t d, unsigned long long *reasons) {
    DEV_CALL("nvmlDeviceGetCurrentClocksEventReasons", d);
    if (!reasons) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *reasons = d->clocks_event;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t d, unsigned long long *reasons) {
    DEV_CALL("nvmlDeviceGetCurrentClocksThrottleReasons", d);
    if (!reasons) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    *reasons = d->clocks_event;
    LEAVE(NVML_SUCCESS);
}

/* ---- events (XID) ----------------------------------------------------------------------------- */

static struct fake_event_set event_set;

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    nvmlReturn_t rc = enter("nvmlEventSetCreate", 1);
    if (rc) LEAVE(rc);
    if (!set) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    memset(&event_set, 0, sizeof event_set);
    *set = &event_set;
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t d, unsigned long long types, nvmlEventSet_t set) {
    DEV_CALL("nvmlDeviceRegisterEvents", d);
    if (!set || d->mig >= 0) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    if (types & EVENT_XID) {  /* events from now on: earlier XIDs are not replayed */
        set->registered[d->gpu] = 1;
        set->delivered_us[d->gpu] = now_us;
    }
    LEAVE(NVML_SUCCESS);
}

nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    nvmlReturn_t rc = enter("nvmlEventSetWait_v2", 1);
    if (rc) LEAVE(rc);
    if (!set || !data) LEAVE(NVML_ERROR_INVALID_ARGUMENT);
    for (int g = 0; g < n_gpus; g++) {
        if (!set->registered[g]) continue;
        for (size_t i = 0; i < gpus[g].xids.n; i++) {
            const xid_event *e = &gpus[g].xids.v[i];
            if (e->ts <= set->delivered_us[g] || e->ts > now_us) continue;
            set->delivered_us[g] = e->ts;
            *data = (nvmlEventData_t){&gpus[g], EVENT_XID, e->xid, 0xFFFFFFFFu, 0xFFFFFFFFu};
            LEAVE(NVML_SUCCESS);
        }
    }
    pthread_mutex_unlock(&lock);
    if (timeoutms) usleep(timeoutms * 1000u); /* nothing arrives while we wait: the file is re-read per call */
    return NVML_ERROR_TIMEOUT;
}

/* ---- test hooks (not NVML) -------------------------------------------------------------------- */

/* How many times the named entry point was called in this process (0 if never). */
unsigned long fakeNvmlCallCount(const char *name) {
    unsigned long n = 0;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < n_calls; i++)
        if (!strcmp(calls[i].name, name)) n = calls[i].n;
    pthread_mutex_unlock(&lock);
    return n;
}

/* Forget calls, init references and event registrations: a fresh driver for the next test. */
void fakeNvmlReset(void) {
    pthread_mutex_lock(&lock);
    n_calls = 0; init_refs = 0; next_path[0] = 0;
    memset(&event_set, 0, sizeof event_set);
    memset(&seen, 0, sizeof seen);
    pthread_mutex_unlock(&lock);
}

/* After the next INSUFFICIENT_SIZE answer, read the scenario at `next` instead (a race test). */
void fakeNvmlSwitchAfterSizeQuery(const char *next) {
    pthread_mutex_lock(&lock);
    snprintf(next_path, sizeof next_path, "%s", next ? next : "");
    pthread_mutex_unlock(&lock);
}

/* At exit, "name count" lines to $GPULEDGER_FAKE_NVML_CALLS (for a library used by a subprocess). */
__attribute__((destructor)) static void dump_calls(void) {
    const char *out = getenv("GPULEDGER_FAKE_NVML_CALLS");
    if (!out || !*out) return;
    FILE *f = fopen(out, "w");
    if (!f) return;
    for (int i = 0; i < n_calls; i++) fprintf(f, "%s %lu\n", calls[i].name, calls[i].n);
    fclose(f);
}
