#ifndef SLUICE_CLINUX_SHIM_H
#define SLUICE_CLINUX_SHIM_H
/* Linux interfaces that Swift's Glibc module does not export. */
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <malloc.h>
#endif
