/*
 * test-model-tool.c - the "model_tool" suite: dexec-model init writes a
 * model the worker library opens and runs, the same options give the same
 * bytes, another seed other weights; info describes a file; bad options are
 * refused with their message. Runs the tool named by $DEXEC_MODEL_TOOL.
 */
#include <config.h>

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kernels.h"

static char tmpdir[256];
static char outbuf[65536];

static void setup(void)
{
    const char *base = getenv("TMPDIR");

    snprintf(tmpdir, sizeof tmpdir, "%s/dexec-mt-XXXXXX", base && *base ? base : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void)
{
    char cmd[512];

    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

/* Runs the tool with argv (NULL-terminated, argv[0] ignored), stdout and
 * stderr together into outbuf; returns the exit status, or -1. The child
 * is killed after 60 s: a test never waits without a deadline. */
static int run_tool(const char *const *argv)
{
    const char *tool = getenv("DEXEC_MODEL_TOOL");
    char outpath[512];
    const char *args[32];
    time_t deadline = time(NULL) + 60;
    int status, fd, i;
    pid_t pid, r;
    ssize_t n;

    ck_assert_msg(tool != NULL, "DEXEC_MODEL_TOOL is not set (run through make check)");
    snprintf(outpath, sizeof outpath, "%s/out.txt", tmpdir);
    args[0] = tool;
    for (i = 1; argv[i] != NULL && i < 31; i++)
        args[i] = argv[i];
    args[i] = NULL;
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        fd = open(outpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0)
            _exit(126);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(tool, (char *const *)args);
        _exit(127);
    }
    while ((r = waitpid(pid, &status, WNOHANG)) == 0 && time(NULL) < deadline)
        usleep(10000);
    if (r == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        return -1;
    }
    fd = open(outpath, O_RDONLY);
    ck_assert_int_ge(fd, 0);
    n = read(fd, outbuf, sizeof outbuf - 1);
    close(fd);
    outbuf[n > 0 ? n : 0] = '\0';
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int same_file(const char *a, const char *b)
{
    char cmd[1100];

    snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s'", a, b);
    return system(cmd) == 0;
}

START_TEST(test_init_open_generate)
{
    char p1[512], p2[512], p3[512], err[1024];
    const char *a1[] = {"", "init", p1, "--image-size", "8", "--channels", "3", "--patch", "2",
                        "--hidden", "16", "--depth", "2", "--heads", "2", "--classes", "2",
                        "--vocab", "cat=0,kitty=0,dog=1", "--seed", "9", "--shift", "2", NULL};
    dxk_model *m = NULL;
    dexec_request r;
    dexec_output o;
    dexec_value *info;

    snprintf(p1, sizeof p1, "%s/a.safetensors", tmpdir);
    snprintf(p2, sizeof p2, "%s/b.safetensors", tmpdir);
    snprintf(p3, sizeof p3, "%s/c.safetensors", tmpdir);
    ck_assert_msg(run_tool(a1) == 0, "%s", outbuf);
    a1[2] = p2;
    ck_assert_msg(run_tool(a1) == 0, "%s", outbuf);
    ck_assert(same_file(p1, p2));
    a1[2] = p3;
    a1[20] = "10";
    ck_assert_msg(run_tool(a1) == 0, "%s", outbuf);
    ck_assert(!same_file(p1, p3));

    ck_assert_msg(dxk_model_open(p1, "cpu", 0, &m, err, sizeof err) == DEXEC_OK, "%s", err);
    info = dxk_model_info(m);
    ck_assert_str_eq(dexec_value_as_str(dexec_value_map_get(dexec_value_map_get(info, "metadata"),
                                                            "dexec.class_names"),
                                        ""),
                     "[\"cat\", \"dog\"]");
    dexec_value_free(info);
    dexec_request_init(&r);
    r.prompt = "a Kitty";
    r.seed = 1;
    dexec_output_init(&o);
    ck_assert_msg(dxk_generate(m, &r, &o, NULL, NULL, err, sizeof err) == DEXEC_OK, "%s", err);
    ck_assert_int_eq(o.images[0].width, 8);
    ck_assert_int_eq(o.images[0].channels, 3);
    dexec_output_clear(&o);
    dxk_model_free(m);
}
END_TEST

START_TEST(test_info)
{
    char p[512];
    const char *a1[] = {"", "init", p, "--depth", "1", "--hidden", "8", "--heads", "2", NULL};
    const char *a2[] = {"", "info", p, NULL};

    snprintf(p, sizeof p, "%s/i.safetensors", tmpdir);
    ck_assert_msg(run_tool(a1) == 0, "%s", outbuf);
    ck_assert_msg(run_tool(a2) == 0, "%s", outbuf);
    ck_assert_msg(strstr(outbuf, "  dexec.format = dit\n") != NULL, "%s", outbuf);
    ck_assert_msg(strstr(outbuf, "  blocks.0.attn.qkv.weight                 F32  [24, 8]\n") !=
                      NULL,
                  "%s", outbuf);
    ck_assert_msg(strstr(outbuf, "tensors: 21\n") != NULL, "%s", outbuf);
    ck_assert_msg(strstr(outbuf, "check: ok (DiT 28x28") != NULL, "%s", outbuf);
}
END_TEST

START_TEST(test_bad_options)
{
    char p[512];
    const char *a1[] = {"", "init", p, "--patch", "3", NULL};
    const char *a2[] = {"", "init", p, "--heads", "zero", NULL};
    const char *a3[] = {"", "init", p, "--classes", "2", "--vocab", "cat=2", NULL};
    const char *a4[] = {"", "frobnicate", NULL};
    const char *a5[] = {"", "info", "/nonexistent/x.safetensors", NULL};
    struct stat sb;

    snprintf(p, sizeof p, "%s/bad.safetensors", tmpdir);
    ck_assert_int_eq(run_tool(a1), 2);
    ck_assert_str_eq(outbuf, "dexec-model: --image-size 28 is not a multiple of --patch 3\n");
    ck_assert_int_eq(run_tool(a2), 2);
    ck_assert_str_eq(outbuf, "dexec-model: --heads 'zero': expected an integer in 1..256\n");
    ck_assert_int_eq(run_tool(a3), 1);
    ck_assert_msg(strncmp(outbuf, "dexec-model: --vocab '2': expected an integer in 0..1\n", 53) ==
                      0,
                  "%s", outbuf);
    ck_assert_int_ne(stat(p, &sb), 0);
    ck_assert_int_eq(run_tool(a4), 2);
    ck_assert_msg(strncmp(outbuf, "dexec-model: unknown command 'frobnicate' (init, info)\n", 55) ==
                      0,
                  "%s", outbuf);
    ck_assert_int_eq(run_tool(a5), 1);
    ck_assert_str_eq(outbuf, "dexec-model: /nonexistent/x.safetensors: cannot open: No such file "
                             "or directory\n");
}
END_TEST

static Suite *model_tool_suite(void)
{
    Suite *s = suite_create("model_tool");
    TCase *tc = tcase_create("dexec-model");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_init_open_generate);
    tcase_add_test(tc, test_info);
    tcase_add_test(tc, test_bad_options);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(model_tool_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
