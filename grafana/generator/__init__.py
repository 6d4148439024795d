"""The Grafana dashboards as code: typed builders of grafana-foundation-sdk (the Grafana 11.6 schema line)
over the names the package and the rules use. `make dashboards` writes grafana/dashboards/*.json; a test
fails when the committed JSON differs from what this produces. A dev-only tool: nothing here runs in an app."""
