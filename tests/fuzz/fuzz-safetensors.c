/*
 * fuzz-safetensors.c - libFuzzer target for the safetensors reader: the
 * input is a whole model file (8-byte header length, JSON header, data).
 * It is opened by dxk_st_open through a memory file, as a worker opens a
 * model a client named; a file that opens must have tensors that lie in
 * the data buffer, in order, and that can be found by name.
 *
 *   make -C tests fuzz-run FUZZ_TARGET=safetensors FUZZ_SECONDS=180   (needs clang)
 */
#define _GNU_SOURCE
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <dexec/dexec.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64], err[1024];
    dxk_safetensors *st = NULL;
    int fd = memfd_create("fuzz.safetensors", MFD_CLOEXEC);

    if (fd < 0)
        abort();
    if (size > 0 && write(fd, data, size) != (ssize_t)size)
        abort();
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    if (dxk_st_open(path, &st, err, sizeof(err)) == DEXEC_OK) {
        size_t end = 0;

        for (size_t i = 0; i < st->ntensors; i++) {
            const dxk_tensor *t = &st->tensors[i];

            if (t->begin != end || t->end < t->begin || t->end > size ||
                dxk_st_find(st, t->name) != t)
                abort();
            if (t->numel > 0) {
                /* reading the last element is the check: ASan sees a short view */
                volatile float last = t->data[t->numel - 1];

                (void)last;
            }
            end = t->end;
        }
        if (st->data_off + end != size)
            abort();
        dxk_st_close(st);
    } else if (strncmp(err, path, strlen(path)) != 0) {
        /* every refusal starts with the file it is about */
        fprintf(stderr, "message does not name the file: %s\n", err);
        abort();
    }
    close(fd);
    return 0;
}
