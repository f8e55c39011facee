"""The proxy's endpoint table: one line per NodeODM endpoint."""

from __future__ import annotations

from aiohttp import web

from clusterodm.proxy import info_api, tasks_api

ROUTES = [
    web.get("/info", info_api.info),
    web.get("/options", info_api.options),
    web.post("/cache/clear", info_api.cache_clear),
    web.get("/auth/info", info_api.auth_info),
    web.post("/auth/login", info_api.auth_not_available),
    web.post("/auth/register", info_api.auth_not_available),
    web.post("/commit", info_api.commit_webhook),
    web.post("/task/new/init", tasks_api.task_new_init),
    web.post("/task/new/upload/{uuid}", tasks_api.task_new_upload),
    web.post("/task/new/commit/{uuid}", tasks_api.task_new_commit),
    web.post("/task/new", tasks_api.task_new),
    web.get("/task/list", tasks_api.task_list),
    web.get("/task/{uuid}/info", tasks_api.task_info),
    web.get("/task/{uuid}/output", tasks_api.task_output),
    web.get("/task/{uuid}/download/{asset}", tasks_api.task_download),
    web.post("/task/{action:cancel|remove|restart}", tasks_api.task_action),
    web.get("/", info_api.web_ui),
    # the node's web UI files; info_api.web_ui forwards only those (nodes/paths.py)
    web.get(r"/{path:.+\.(?:css|js|woff2?|ttf|eot|ico|png|gif|svg|map|html)}", info_api.web_ui),
]
