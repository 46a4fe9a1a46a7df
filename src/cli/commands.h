/*
 * commands.h - the ergo subcommands. Each lives in src/cli/cmd_<verb>.c, parses
 * its own options, prints one clear line on failure and returns the process
 * exit status (0 ok, 1 failure, 2 usage error).
 */
#ifndef ERGO_COMMANDS_H
#define ERGO_COMMANDS_H

int cmd_tokenize(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_preprocess(int argc, char **argv);
int cmd_make_checkpoint(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_train_grpo(int argc, char **argv); /* `ergo train grpo`, through cmd_train */
int cmd_generate(int argc, char **argv);
int cmd_download(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_lora(int argc, char **argv);

#endif
