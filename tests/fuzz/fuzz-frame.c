/*
 * fuzz-frame.c - libFuzzer target for the frame decoder: the input is a
 * byte stream as a peer would send it. Every frame found is decoded; a
 * decoded message must re-encode and decode to an equal value.
 *
 *   make -C tests fuzz FUZZ_SECONDS=180     (needs clang)
 */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <dexec/rpc.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dexec_reader *r = dexec_reader_new(1 << 16);
    char err[256];

    /* as a stream: the reader holds what recv() would have read */
    if (r == NULL || dexec_reader_feed(r, data, size, err, sizeof(err)) != DEXEC_OK)
        abort();
    for (;;) {
        dexec_value *m = NULL, *again = NULL;
        char *enc;
        size_t len;

        if (dexec_reader_take(r, &m, err, sizeof(err)) != DEXEC_OK || m == NULL)
            break;
        if (dexec_value_to_msgpack(m, &enc, &len) == DEXEC_OK) {
            if (dexec_value_from_msgpack(enc, len, &again, err, sizeof(err)) != DEXEC_OK ||
                !dexec_value_equal(m, again))
                abort();
            free(enc);
        }
        dexec_value_free(again);
        dexec_value_free(m);
    }
    dexec_reader_free(r);
    /* and as one bare message */
    {
        dexec_value *v = NULL;

        if (dexec_value_from_msgpack((const char *)data, size, &v, err, sizeof(err)) == DEXEC_OK)
            dexec_value_free(v);
    }
    return 0;
}
