# runner's fixtures: runner_broker_url, runner_settings, runner_plugins, runner_worker,
# runner_client. They use an embedded broker in a temporary file, or the broker named by
# RUNNER_TEST_BROKER_URL (e.g. amqp://guest:guest@127.0.0.1:5672/).
pytest_plugins = ["runner.testing"]
