/* generate.c - the engine from C: one image of a sneaker (README.md).
 * Build: cc generate.c $(pkg-config --cflags --libs dexec) -o generate */
#include <stdio.h>

#include <dexec/dexec.h>

int main(void)
{
    dexec_config *cfg = NULL;
    dexec_engine *e = NULL;
    dexec_output *out = NULL;
    dexec_request r;
    char err[1024];
    int rc = 1;

    /* NULL: $DEXEC_CONFIG if set, else the defaults */
    if (dexec_config_load(NULL, &cfg, err, sizeof err) != DEXEC_OK ||
        dexec_engine_create(cfg, &e, err, sizeof err) != DEXEC_OK) {
        fprintf(stderr, "%s\n", err);
        goto done;
    }
    dexec_request_init(&r);
    r.prompt = "sneaker";
    r.seed = 7;
    if (dexec_engine_step(e, &r, 1, &out, NULL, NULL) != DEXEC_OK)
        fprintf(stderr, "%s\n", dexec_engine_last_error(e));
    else if (out[0].status != DEXEC_OK)
        fprintf(stderr, "%s\n", out[0].error);
    else {
        const dexec_image *im = &out[0].images[0];

        printf("%dx%d, %d channels, seed %lld\n", im->width, im->height, im->channels,
               (long long)out[0].seed);
        rc = 0;
    }
done:
    dexec_outputs_free(out, 1);
    dexec_engine_free(e);
    dexec_config_free(cfg);
    return rc;
}
