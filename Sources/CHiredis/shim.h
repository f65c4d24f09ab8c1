#ifndef SLUICE_CHIREDIS_SHIM_H
#define SLUICE_CHIREDIS_SHIM_H
#include <hiredis/hiredis.h>
#include <hiredis/async.h>

/* The async API Sluice uses (redisAsyncConnect, redisAsyncCommandArgv, the ev hooks) is not variadic and
   imports as is; the printf-style redisAsyncCommand is never called. Only the reply's element accessor is
   wrapped: Swift imports `redisReply **element` as a doubly optional pointer. No logic. */
static inline redisReply *sluice_redis_reply_element(redisReply *reply, size_t index) { return reply->element[index]; }
#endif
