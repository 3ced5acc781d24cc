"""`hpo run SPEC` (and `make run`): a controller in this process, one search submitted to it, watched live."""

from __future__ import annotations

import argparse
import threading
import time

import uvicorn

from hpo_service import client
from hpo_service.api.app import create_app


def run_locally(spec: dict, db: str | None, port: int) -> int:
    """Serve on 127.0.0.1:``port``, submit ``spec``, watch it to the end; Ctrl-C stops the whole thing."""
    server = uvicorn.Server(uvicorn.Config(create_app(db), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="controller", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        while not server.started:
            if not thread.is_alive():
                raise client.ClientError(f"the controller could not start on port {port} (is it in use?)")
            time.sleep(0.1)
        created = client.request("POST", url, "/api/searches", json=spec)
        search_id = created["id"]
        print(f"controller: {url}  (dashboard: {url}/, API docs: {url}/docs)")
        print(f"search {search_id} submitted; Ctrl-C stops the controller (the search resumes with it later)")
        code = client.watch(argparse.Namespace(search_id=search_id, server=url, interval=1.0))
        model = spec.get("model", {})
        wider, deeper = 4 * model.get("width", 64), 2 * model.get("depth", 2)
        print(f"export for a 4x wider, 2x deeper model: hpo export {search_id} --server {url} -o best.json "
              f"--width {wider} --depth {deeper}", flush=True)  # fmt: skip
        print("the controller keeps serving (dashboard and export) until Ctrl-C", flush=True)
        while thread.is_alive():  # in short waits: a Ctrl-C that another thread received is acted on within one
            thread.join(timeout=0.5)
        return code
    except KeyboardInterrupt:
        print("\nstopping the controller", flush=True)
        return 130
    finally:
        server.should_exit = True
        thread.join(timeout=60)
