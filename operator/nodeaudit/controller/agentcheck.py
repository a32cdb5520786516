"""The monitoring-agent check (``spec.monitoringAgent``): each policy's AgentReady verdict.

Why a loop of its own: a check lists scale sets in Azure Resource Manager and can take seconds; it
runs as its own task per policy, every ``interval``, and never holds the reconcile loop. Its
state (last verdict, when the next is due, which scale sets it saw) lives here per policy, not in
the policy's entry: a policy change re-checks at once only when the check's settings changed. The
reconciler reads the verdict into the policy's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nodeaudit.controller import kube as kube_mod
from nodeaudit.controller import metrics
from nodeaudit.controller.config import Config
from nodeaudit.controller.view import View
from nodeaudit.core import agent as agent_mod
from nodeaudit.core import delivery as delivery_mod
from nodeaudit.core import nodes as nodes_mod

if TYPE_CHECKING:
    from nodeaudit.azure.checker import AgentChecker
    from nodeaudit.azure.clients import ArmClients
    from nodeaudit.controller.writer import Writer
    from nodeaudit.core.agent import AgentSettings

log = logging.getLogger("nodeaudit.controller.agentcheck")

Verdict = tuple[str, str, str]  # AgentReady status, reason, message
IDLE_WAKE_SECONDS = 30.0


@dataclass
class AgentState:
    """One policy's agent check."""

    verdict: Verdict | None = None
    delivered: Verdict | None = None  # the Delivered condition (arrival of the canaries)
    scale_sets: list[dict[str, Any]] | None = None  # status.agent
    key: str = ""  # the settings the verdict is for; a change re-checks at once
    due: float = 0.0
    task: asyncio.Task[None] | None = None
    checker: AgentChecker | None = None  # its verdict cache is sized to the policy's interval
    # Scale sets (ScaleSetRef.key) of the matched nodes, as of the last check plus those noticed
    # since: a node in a scale set not in here makes the check due at once.
    scale_set_keys: set[tuple[str, str, str]] = field(default_factory=set)


class AgentCheck:
    def __init__(self, view: View, kube: kube_mod.Kube, config: Config, writer: Writer | None = None) -> None:
        self.view = view
        self.config = config
        self.kube = kube
        self.writer = writer  # writes each node's deliveredAt; None: not written
        self.states: dict[str, AgentState] = {}
        # One ArmClients per process, made on the first check, in this loop.
        self.arm: ArmClients | None = None
        self.wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ---- what the reconciler asks ---------------------------------------------------------

    def verdict(self, policy: str) -> tuple[Verdict | None, list[dict[str, Any]] | None]:
        """(AgentReady, status.agent) for the policy's status; (None, None) before any check."""
        state = self.states.get(policy)
        return (state.verdict, state.scale_sets) if state is not None else (None, None)

    def delivered(self, policy: str) -> Verdict | None:
        """The Delivered condition for the policy's status; None before any check."""
        state = self.states.get(policy)
        return state.delivered if state is not None else None

    def policy_changed(self) -> None:
        self.wake.set()

    def forget(self, policy: str) -> None:
        state = self.states.pop(policy, None)
        if state is not None and state.task is not None:
            state.task.cancel()

    def notice_scale_set(self, node: nodes_mod.NodeFacts) -> None:
        """A node in a scale set that a policy's agent check has not seen makes that check due now
        (the checker's cache keeps the other scale sets: one list call, for the new one)."""
        if not node.eligible:
            return
        ref = agent_mod.parse_provider_id(node.provider_id)
        if not isinstance(ref, agent_mod.ScaleSetRef):
            return
        for entry in self.view.policies.values():
            if entry.policy is None or not entry.active:
                continue
            state = self._state(entry.name)
            if (ref.key in state.scale_set_keys or not agent_mod.settings_from_spec(entry.policy.spec).runs
                    or not nodes_mod.matches(entry.policy.spec.node_selector, node.labels)):
                continue
            state.scale_set_keys.add(ref.key)
            state.due = 0.0  # also while a check runs: _check then leaves it due
            self.wake.set()

    # ---- the loop -------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="nodeaudit-agent-check")

    async def stop(self) -> None:
        tasks = [t for t in (self._task,) if t is not None]
        tasks += [s.task for s in self.states.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None
        if self.arm is not None:
            await self.arm.close()
            self.arm = None

    def _state(self, policy: str) -> AgentState:
        return self.states.setdefault(policy, AgentState())

    async def _loop(self) -> None:
        """Start each policy's agent check every ``spec.monitoringAgent.interval``."""
        while not self.view.primed:
            await asyncio.sleep(0.1)
        while True:
            now = time.monotonic()
            next_due = now + IDLE_WAKE_SECONDS
            for entry in list(self.view.policies.values()):
                if entry.policy is None or not entry.active:
                    continue
                state = self._state(entry.name)
                try:
                    settings = agent_mod.settings_from_spec(entry.policy.spec)
                except ValueError as e:
                    self._set(entry.name, ("Unknown", "CheckFailed", str(e)), [])
                    continue
                key = repr(settings)
                if key != state.key:
                    state.key, state.due, state.checker = key, 0.0, None
                if not settings.runs:  # no ARM call, no cluster read
                    self._set(entry.name, agent_mod.disabled_condition(), [])
                    continue
                if state.task is not None and not state.task.done():
                    continue
                if state.due <= now:
                    # The next one is due an interval after this one *ends* (see _check): the
                    # checker's cache (TTL 0.9 x interval) has then always expired, so every check
                    # lists every scale set exactly once, however long this one takes.
                    state.due = float("inf")
                    if state.verdict is None:
                        self._set(entry.name, ("Unknown", "Checking", "the first agent check is running"), None)
                    state.task = asyncio.create_task(self._check(entry.name, settings),
                                                     name=f"nodeaudit-agent-{entry.name}")
                next_due = min(next_due, state.due)
            self.wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=max(0.05, next_due - time.monotonic()))

    def _set(self, policy: str, verdict: Verdict, scale_sets: list[dict[str, Any]] | None) -> None:
        """A new verdict (``scale_sets`` None: keep status.agent as it is) marks the policy for a pass."""
        state = self.states.get(policy)
        if state is None or policy not in self.view.policies:
            return
        if state.verdict == verdict and (scale_sets is None or state.scale_sets == scale_sets):
            return
        state.verdict = verdict
        if scale_sets is not None:
            state.scale_sets = scale_sets
        self.view.mark(policy)

    async def _check(self, name: str, settings: AgentSettings) -> None:
        try:
            await self._run(name, settings)
        except Exception as e:  # nobody awaits this task: say it, never lose it
            log.exception("agent check of policy %s failed", name)
            self._set(name, ("Unknown", "CheckFailed", f"{type(e).__name__}: {e}"), None)
        finally:
            state = self.states.get(name)
            if state is not None and state.due == float("inf"):  # 0 when the spec changed meanwhile
                state.due = time.monotonic() + settings.interval_seconds
            self.wake.set()

    async def _run(self, name: str, settings: AgentSettings) -> None:
        from nodeaudit.azure import check as azure
        from nodeaudit.azure.checker import AgentChecker, ttl_for_interval
        from nodeaudit.azure.clients import ArmClients, ArmOptions

        entry = self.view.policies.get(name)
        state = self.states.get(name)
        if entry is None or entry.policy is None or state is None:
            return
        matched = self.view.matched_nodes(entry)
        state.scale_set_keys = {ref.key for n in matched
                                if isinstance(ref := agent_mod.parse_provider_id(n.provider_id),
                                              agent_mod.ScaleSetRef)}
        nodes = [{"metadata": {"name": n.name, "labels": dict(n.labels)},
                  "spec": {"providerID": n.provider_id, "taints": self.view.raw_taints.get(n.name, [])}}
                 for n in matched]
        in_azure = (settings.data_collection_rule_id or settings.workspace_resource_id or settings.workspace_id
                    or (settings.check == "Auto" and self.config.cluster_resource_id))
        if not state.scale_set_keys and not in_azure:
            # Nothing of this policy lives in Azure: no client, no credential (no chain started), no request.
            report = agent_mod.AgentReport(check=settings.check,
                                           not_checkable=dict(agent_mod.group_nodes(nodes).not_checkable))
            self._report(name, entry.generation, report)
            return
        if self.arm is None:
            try:  # NODEAUDIT_ARM_ENDPOINT is checked here (https only): a bad one is the verdict
                verify = self.config.arm_ca_file or True
                self.arm = ArmClients(options=ArmOptions(connection_verify=verify),
                                      logs_endpoint=self.config.logs_endpoint,
                                      cluster_resource_id=self.config.cluster_resource_id,
                                      observe=metrics.observe_arm)
            except ValueError as e:
                log.error("agent check of policy %s cannot run: %s", name, e)
                self._set(name, ("False", "ArmConfigInvalid", str(e)), None)
                return
        # ContainerInsights reads the cluster, not ARM, unless remediation or a DCR/workspace is asked for.
        arm_calls = (settings.check != "ContainerInsights" or settings.remediate or in_azure)
        problem = await _credential_problem(self.arm) if arm_calls else None
        if problem is not None:  # once, not once per scale set, and never the chain's dump
            log.warning("agent check of policy %s cannot run: %s", name, problem)
            self._set(name, ("Unknown", "CredentialUnavailable", problem), None)
            return
        if state.checker is None:
            state.checker = AgentChecker(self.arm, ttl=ttl_for_interval(settings.interval_seconds),
                                         retry_note="; retried next interval")
        try:
            # the cluster is read for ContainerInsights only: the operator has no RBAC on Secrets
            kube = self.kube if settings.check == "ContainerInsights" else None
            report = await azure.check_policy_agents(nodes, settings, state.checker, kube=kube)
        except Exception as e:  # noqa: BLE001 - a check that cannot run is a verdict, not a crash
            log.warning("agent check of policy %s could not run: %s", name, e)
            self._set(name, ("Unknown", "CheckFailed", f"{type(e).__name__}: {e}"), None)
            return
        self._report(name, entry.generation, report)
        await self._arrival(name, settings, state.checker, matched)

    def _report(self, name: str, generation: int, report: agent_mod.AgentReport) -> None:
        cond = agent_mod.agent_condition(report, observed_generation=generation)
        if name not in self.view.policies:
            return
        states: dict[str, int] = {}
        for s in report.scale_sets:
            states[s.state] = states.get(s.state, 0) + 1
        metrics.set_agent(name, states, str(cond["status"]))
        log.info("agent check of policy %s: %s %s", name, cond["reason"], cond["message"])
        self._set(name, (str(cond["status"]), str(cond["reason"]), str(cond["message"])),
                  agent_mod.agent_status(report))

    async def _arrival(self, name: str, settings: AgentSettings, checker: AgentChecker,
                       matched: list[nodes_mod.NodeFacts]) -> None:
        """One Log Analytics query for the newest canary of every matched node; Delivered and
        each node's deliveredAt."""
        records = {n.name: n.record(name) for n in matched}
        verdict = await checker.check_arrival(
            name, records, workspace_resource_id=settings.workspace_resource_id, workspace_id=settings.workspace_id,
            grace_seconds=settings.delivery_grace_seconds)
        state = self.states.get(name)
        if state is None or name not in self.view.policies:
            return
        if verdict.reason not in ("NoWorkspace", "NoCanary"):
            log.info("arrival check of policy %s: %s %s", name, verdict.reason, verdict.message)
        delivered = (verdict.status, verdict.reason, verdict.message)
        if state.delivered != delivered:
            state.delivered = delivered
            self.view.mark(name)
        if self.writer is not None:
            for node, (old, new) in delivery_mod.delivered_updates(records, verdict.delivered_at).items():
                await self.writer.write_delivered(name, node, old, new)


async def _credential_problem(arm: ArmClients) -> str | None:
    """One token request before a check: why the credential gives none (one sentence), or None."""
    from azure.core.exceptions import ClientAuthenticationError

    from nodeaudit.azure.credential import credential_message

    try:
        await arm.credential.get_token(f"{arm.endpoint}/.default")
    except ClientAuthenticationError as e:
        return credential_message(e)
    return None
