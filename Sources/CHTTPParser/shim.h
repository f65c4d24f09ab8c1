#ifndef SLUICE_CHTTPPARSER_SHIM_H
#define SLUICE_CHTTPPARSER_SHIM_H
/* Debian's libhttp-parser (nodejs/http-parser 2.9): the HTTP/1.x request parser. */
#include <http_parser.h>
#endif
