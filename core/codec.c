/* codec.c - requests and outputs as worker-protocol values (the "generate"
 * method's argument and reply, see doc/protocol.md). */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void put_str(dexec_value *m, const char *k, const char *s)
{
    dexec_value_map_set(m, k, s != NULL ? dexec_value_str(s) : dexec_value_nil());
}

dexec_value *dexec_request_to_value(const dexec_request *r)
{
    dexec_value *m;

    if (r == NULL ||
        DEXEC_STRUCT_CHECK(r, dexec_request, DEXEC_REQUEST_SIZE_1_1, NULL, 0) != DEXEC_OK)
        return NULL;
    if ((m = dexec_value_map()) == NULL)
        return NULL;
    put_str(m, "request_id", r->request_id);
    put_str(m, "prompt", r->prompt != NULL ? r->prompt : "");
    put_str(m, "negative_prompt", r->negative_prompt);
    dexec_value_map_set(m, "height", dexec_value_int(r->height));
    dexec_value_map_set(m, "width", dexec_value_int(r->width));
    dexec_value_map_set(m, "num_inference_steps", dexec_value_int(r->num_inference_steps));
    dexec_value_map_set(m, "guidance_scale", dexec_value_float(r->guidance_scale));
    dexec_value_map_set(m, "seed", dexec_value_int(r->seed));
    dexec_value_map_set(m, "num_outputs_per_prompt", dexec_value_int(r->num_outputs_per_prompt));
    if (m->u.map.len != 9) {
        dexec_value_free(m);
        return NULL;
    }
    /* added after ABI 1.1: sent only when set, so older workers see the
     * requests they always saw */
    if (DEXEC_HAS_FIELD(r, dexec_request, sampler) && r->sampler != NULL)
        put_str(m, "sampler", r->sampler);
    if (DEXEC_HAS_FIELD(r, dexec_request, noise_bytes) && r->noise != NULL)
        dexec_value_map_set(m, "noise", dexec_value_bin(r->noise, (size_t)r->noise_bytes));
    if (DEXEC_HAS_FIELD(r, dexec_request, step_noise_bytes) && r->step_noise != NULL)
        dexec_value_map_set(m, "step_noise",
                            dexec_value_bin(r->step_noise, (size_t)r->step_noise_bytes));
    if (m->u.map.len != 9 + (DEXEC_HAS_FIELD(r, dexec_request, step_noise_bytes)
                                 ? (size_t)(r->sampler != NULL) + (r->noise != NULL) +
                                       (r->step_noise != NULL)
                                 : 0)) {
        dexec_value_free(m);
        return NULL;
    }
    return m;
}

static dexec_status decode_image(const dexec_value *v, dexec_image *img, char *err,
                                 size_t errlen)
{
    int64_t w = dexec_value_as_int(dexec_value_map_get(v, "width"), -1);
    int64_t h = dexec_value_as_int(dexec_value_map_get(v, "height"), -1);
    int64_t c = dexec_value_as_int(dexec_value_map_get(v, "channels"), -1);
    const dexec_value *px = dexec_value_map_get(v, "pixels");

    if (w <= 0 || h <= 0 || w > 65536 || h > 65536 || (c != 1 && c != 3 && c != 4))
        return dx_fail(err, errlen, DEXEC_EPROTO,
                       "image with bad dimensions %lldx%lldx%lld in a generate reply",
                       (long long)w, (long long)h, (long long)c);
    if (px == NULL || px->type != DEXEC_VAL_BIN || px->u.str.len != (size_t)(w * h * c))
        return dx_fail(err, errlen, DEXEC_EPROTO,
                       "image pixels missing or not %lld bytes in a generate reply",
                       (long long)(w * h * c));
    img->pixels = malloc(px->u.str.len);
    if (img->pixels == NULL)
        return dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory for an image");
    memcpy(img->pixels, px->u.str.ptr, px->u.str.len);
    img->width = (int)w;
    img->height = (int)h;
    img->channels = (int)c;
    return DEXEC_OK;
}

dexec_status dexec_output_from_value(const dexec_value *v, dexec_output *out, char *err,
                                     size_t errlen)
{
    const dexec_value *images, *t, *e;

    dexec_output_init(out);
    out->rank = -1;
    if (v == NULL || v->type != DEXEC_VAL_MAP)
        return dx_fail(err, errlen, DEXEC_EPROTO, "generate reply entry is not a map");
    out->request_id = dx_strdup(dexec_value_as_str(dexec_value_map_get(v, "request_id"), NULL));
    out->rank = (int)dexec_value_as_int(dexec_value_map_get(v, "rank"), -1);
    out->seed = dexec_value_as_int(dexec_value_map_get(v, "seed"), -1);
    out->steps = (int)dexec_value_as_int(dexec_value_map_get(v, "steps"), 0);
    out->guidance_scale = dexec_value_as_float(dexec_value_map_get(v, "guidance_scale"), 0);
    t = dexec_value_map_get(v, "timings");
    out->timings.queue_s = dexec_value_as_float(dexec_value_map_get(t, "queue"), 0);
    out->timings.encode_s = dexec_value_as_float(dexec_value_map_get(t, "encode"), 0);
    out->timings.denoise_s = dexec_value_as_float(dexec_value_map_get(t, "denoise"), 0);
    out->timings.decode_s = dexec_value_as_float(dexec_value_map_get(t, "decode"), 0);
    out->class_name = dx_strdup(dexec_value_as_str(dexec_value_map_get(v, "class"), NULL));
    out->negative_class_name =
        dx_strdup(dexec_value_as_str(dexec_value_map_get(v, "negative_class"), NULL));
    e = dexec_value_map_get(v, "error");
    if (e != NULL && e->type == DEXEC_VAL_STR) {
        int64_t code = dexec_value_as_int(dexec_value_map_get(v, "code"), DEXEC_EWORKER);

        out->status = code > 0 && code <= DEXEC_ECANCELED ? (dexec_status)code : DEXEC_EWORKER;
        out->error = dx_strdup(e->u.str.ptr);
        return DEXEC_OK;
    }
    images = dexec_value_map_get(v, "images");
    if (images == NULL || images->type != DEXEC_VAL_ARRAY) {
        dexec_output_clear(out);
        return dx_fail(err, errlen, DEXEC_EPROTO, "generate reply entry has no images array");
    }
    out->images = calloc(images->u.arr.len ? images->u.arr.len : 1, sizeof(dexec_image));
    if (out->images == NULL) {
        dexec_output_clear(out);
        return dx_fail(err, errlen, DEXEC_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < images->u.arr.len; i++) {
        dexec_status st;

        dexec_image_init(&out->images[i]);
        st = decode_image(images->u.arr.items[i], &out->images[i], err, errlen);

        if (st != DEXEC_OK) {
            dexec_output_clear(out);
            return st;
        }
        out->num_images++;
    }
    out->status = DEXEC_OK;
    return DEXEC_OK;
}
