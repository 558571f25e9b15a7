/*
 * Preloaded into linux.uml so that user-mode-linux 6.1 boots on hosts whose XSAVE area is
 * larger than UML's fixed buffer (CPUs with AVX-512 and AMX, for example).
 *
 * UML saves and restores each guest thread's FPU state with PTRACE_GETREGSET and
 * PTRACE_SETREGSET (NT_X86_XSTATE) through a buffer of a size fixed at build time. The host
 * kernel accepts a short buffer for GETREGSET (it truncates) but refuses SETREGSET unless
 * the buffer is exactly its full XSAVE size (arch/x86/kernel/fpu/regset.c, xstateregs_set:
 * EFAULT). UML then panics at boot: "ptrace set fp regs failed, errno = 14". Upstream
 * fixed it in 2024 ("um: switch to regset API and depend on XSTATE"); Debian's 6.1 UML
 * does not have that change.
 *
 * This shim keeps, for every buffer UML reads the state into, a full-size shadow copy. A
 * GETREGSET fills the shadow and hands UML the part it asked for; a SETREGSET lays UML's
 * (possibly modified) part over the shadow and sets the full state. A buffer never read
 * before (UML copies FPU state between threads with memcpy on fork) is laid over the target
 * thread's current state instead. Every other ptrace request passes straight through, and
 * nothing changes on hosts where UML's buffer is already large enough.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif

#define PROBE_SIZE (64 * 1024)

typedef long (*ptrace_fn)(enum __ptrace_request, pid_t, void *, void *);

static ptrace_fn real_ptrace;
static size_t host_size; /* the host's full NT_X86_XSTATE size; 0 until probed */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* Shadows by UML buffer address: open addressing, grown when half full. */
struct shadow {
    void *key;
    unsigned char *state;
};
static struct shadow *table;
static size_t table_size;
static size_t table_used;

static size_t slot_of(void *key, size_t size)
{
    uintptr_t h = (uintptr_t)key;
    h ^= h >> 17;
    h *= 0x9e3779b97f4a7c15ULL;
    return (size_t)(h >> 7) & (size - 1);
}

static struct shadow *find(void *key, int create)
{
    if (table_size == 0 || (create && 2 * (table_used + 1) > table_size)) {
        size_t new_size = table_size ? 2 * table_size : 256;
        struct shadow *bigger = calloc(new_size, sizeof(*bigger));
        if (bigger == NULL)
            return NULL;
        for (size_t i = 0; i < table_size; i++) {
            if (table[i].key == NULL)
                continue;
            size_t j = slot_of(table[i].key, new_size);
            while (bigger[j].key != NULL)
                j = (j + 1) & (new_size - 1);
            bigger[j] = table[i];
        }
        free(table);
        table = bigger;
        table_size = new_size;
    }
    size_t i = slot_of(key, table_size);
    while (table[i].key != NULL) {
        if (table[i].key == key)
            return &table[i];
        i = (i + 1) & (table_size - 1);
    }
    if (!create)
        return NULL;
    unsigned char *state = malloc(host_size);
    if (state == NULL)
        return NULL;
    table[i].key = key;
    table[i].state = state;
    table_used++;
    return &table[i];
}

/* Learn the host's XSAVE size from a GETREGSET with a buffer larger than any XSAVE area. */
static int probe(pid_t pid)
{
    unsigned char *buffer = malloc(PROBE_SIZE);
    struct iovec iov = {buffer, PROBE_SIZE};
    if (buffer == NULL)
        return -1;
    long rc = real_ptrace(PTRACE_GETREGSET, pid, (void *)NT_X86_XSTATE, &iov);
    free(buffer);
    if (rc < 0)
        return -1;
    host_size = iov.iov_len;
    return 0;
}

static long get_state(pid_t pid, struct iovec *caller)
{
    struct shadow *shadow = find(caller->iov_base, 1);
    if (shadow == NULL) {
        errno = ENOMEM;
        return -1;
    }
    struct iovec full = {shadow->state, host_size};
    long rc = real_ptrace(PTRACE_GETREGSET, pid, (void *)NT_X86_XSTATE, &full);
    if (rc < 0)
        return rc;
    memcpy(caller->iov_base, shadow->state, caller->iov_len);
    return rc;
}

static long set_state(pid_t pid, struct iovec *caller)
{
    struct shadow *shadow = find(caller->iov_base, 0);
    if (shadow == NULL) {
        /* Never read into this buffer: start from the thread's current full state. */
        shadow = find(caller->iov_base, 1);
        if (shadow == NULL) {
            errno = ENOMEM;
            return -1;
        }
        struct iovec full = {shadow->state, host_size};
        long rc = real_ptrace(PTRACE_GETREGSET, pid, (void *)NT_X86_XSTATE, &full);
        if (rc < 0)
            return rc;
    }
    memcpy(shadow->state, caller->iov_base, caller->iov_len);
    struct iovec full = {shadow->state, host_size};
    return real_ptrace(PTRACE_SETREGSET, pid, (void *)NT_X86_XSTATE, &full);
}

long ptrace(enum __ptrace_request request, ...)
{
    va_list args;
    va_start(args, request);
    pid_t pid = va_arg(args, pid_t);
    void *addr = va_arg(args, void *);
    void *data = va_arg(args, void *);
    va_end(args);

    if (real_ptrace == NULL)
        real_ptrace = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
    if ((request != PTRACE_GETREGSET && request != PTRACE_SETREGSET) ||
        (uintptr_t)addr != NT_X86_XSTATE || data == NULL)
        return real_ptrace(request, pid, addr, data);

    struct iovec *caller = data;
    pthread_mutex_lock(&lock);
    long rc;
    if (host_size == 0 && probe(pid) < 0) {
        rc = real_ptrace(request, pid, addr, data);
    } else if (caller->iov_len >= host_size) {
        rc = real_ptrace(request, pid, addr, data);
    } else if (request == PTRACE_GETREGSET) {
        rc = get_state(pid, caller);
    } else {
        rc = set_state(pid, caller);
    }
    pthread_mutex_unlock(&lock);
    return rc;
}
