"""Prometheus metrics of both services: the process's own collectors, job totals kept by
the coordinator that ended each job, and the webapp's metrics behind a token."""

from pathlib import Path

import httpx
from pydantic import SecretStr

from tests.support.brokers import RunningBroker
from tests.support.farm import new_thread, running_farm, send_and_stream

TOKEN = "scrape-me-" + "x" * 20


def _value(text: str, sample: str) -> float:
    (line,) = [x for x in text.splitlines() if x.startswith(sample + " ")]
    return float(line.split()[-1])


async def test_both_services_expose_their_metrics(tmp_path: Path, broker: RunningBroker) -> None:
    webapp = {"metrics_token": SecretStr(TOKEN)}
    async with running_farm(tmp_path, broker, webapp_settings=webapp) as farm:
        browser = farm.browser()
        thread_id = await new_thread(browser)
        done = await send_and_stream(farm, browser, thread_id, "[[sim:tokens=5]] count me")
        assert done.final["state"] == "done"

        async with httpx.AsyncClient() as http:
            coordinator = (await http.get(farm.coordinator_url + "/metrics")).text
            assert _value(coordinator, 'farm_jobs_finished_total{state="succeeded"}') == 1
            assert _value(coordinator, 'farm_jobs_finished_total{state="cancelled"}') == 0
            assert _value(coordinator, 'farm_completion_tokens_total{model="llama3"}') == 5
            assert "process_cpu_seconds_total" in coordinator
            assert "python_gc_collections_total" in coordinator

            hidden = await http.get(farm.web_url + "/metrics")
            assert hidden.status_code == 404
            assert "set-cookie" not in hidden.headers
            wrong = await http.get(
                farm.web_url + "/metrics", headers={"Authorization": "Bearer nope"}
            )
            assert wrong.status_code == 404
            scraped = await http.get(
                farm.web_url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
            )
        assert scraped.status_code == 200
        text = scraped.text
        assert _value(text, 'farm_webapp_mqtt_messages_total{kind="chunk"}') >= 1
        assert _value(text, 'farm_webapp_mqtt_messages_total{kind="thread"}') >= 2
        assert _value(text, "farm_webapp_broker_connected") == 1
        assert _value(text, "farm_webapp_coordinators_live") == 1
        assert "process_resident_memory_bytes" in text
