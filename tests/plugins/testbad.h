/* testbad.h - a complete executor ops table for the test plugins whose
 * descriptors are wrong on purpose: the loader must refuse them before it
 * calls any of these, so each one aborts the test if it is ever reached.
 * (Marked unused: testbadops leaves one out on purpose.) */
#ifndef DEXEC_TESTBAD_H
#define DEXEC_TESTBAD_H

#include <stdlib.h>

#include <dexec/plugin.h>

/* Runs when the object is dlopen()ed: the loader must refuse a plugin of
 * another ABI before that (test-loader checks the variable is unset). */
__attribute__((constructor)) static void tb_loaded(void)
{
    setenv("DEXEC_TESTBAD_LOADED", "1", 1);
}

__attribute__((unused)) static dexec_status tb_create(const dexec_host *host, dexec_executor **out, char *err,
                              size_t errlen)
{
    abort();
}

__attribute__((unused)) static int tb_num_ranks(const dexec_executor *ex)
{
    abort();
}

__attribute__((unused)) static dexec_status tb_rpc(dexec_executor *ex, const char *method, double timeout,
                           const dexec_value *args, const dexec_value *kwargs,
                           int unique_reply_rank, dexec_value **replies, char *err, size_t errlen)
{
    abort();
}

__attribute__((unused)) static dexec_status tb_add(dexec_executor *ex, const dexec_request *reqs, size_t n,
                           dexec_output *outs, double timeout, dexec_progress_fn progress,
                           void *user, char *err, size_t errlen)
{
    abort();
}

__attribute__((unused)) static dexec_status tb_health(dexec_executor *ex, double timeout, char *err, size_t errlen)
{
    abort();
}

__attribute__((unused)) static void tb_shutdown(dexec_executor *ex)
{
    abort();
}

#define TESTBAD_OPS_INIT                                                                       \
    .struct_size = sizeof(dexec_executor_ops), .create = tb_create, .num_ranks = tb_num_ranks, \
    .collective_rpc = tb_rpc, .add_requests = tb_add, .check_health = tb_health,               \
    .shutdown = tb_shutdown

#endif
