"""Random interleavings of loads, purchases, tears, bad MACs and restarts against the card."""

import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from hce import apdu as A
from hce.issuer import Issuer, LoadTransaction, PurchaseTransaction
from hce.sam import Psam
from hce.software_card import CardTorn, SoftwareCard, proof_count_max

from .vectors import ASN, MLK, MPK, MTK, SELECT_CITY, TERMINAL

DATE = bytes.fromhex("20261123")
TIME = bytes.fromhex("120000")
BALANCE_MAX = 20_000
TEARS = st.sampled_from([None, "before", "after"])


def counter_random():
    numbers = itertools.count(1)
    return lambda: next(numbers).to_bytes(4, "big")


class CardMachine(RuleBasedStateMachine):
    issuer = Issuer(master_load_key=MLK, master_purchase_key=MPK, master_tac_key=MTK)

    @initialize(
        balance=st.integers(0, BALANCE_MAX),
        online=st.integers(0, 100),
        offline=st.integers(0, 100),
    )
    def issue(self, balance, online, offline):
        self.random = counter_random()
        self.card = SoftwareCard.issue(
            asn=ASN,
            master_load_key=MLK,
            master_purchase_key=MPK,
            master_tac_key=MTK,
            balance_fen=balance,
            online_counter=online,
            offline_counter=offline,
            balance_max_fen=BALANCE_MAX,
            random=self.random,
        )
        self.sam = Psam(MPK)
        self.balance = balance
        self.online = self.online_start = online
        self.offline = self.offline_start = offline
        self.loads = {}  # counter -> (LoadTransaction, proof or None)
        self.purchases = {}  # counter -> (PurchaseTransaction, proof or None)

    def send(self, command):
        return A.ResponseApdu.from_bytes(self.card.transmit(command))

    def select(self):
        assert self.send(SELECT_CITY).ok

    def _maybe_tear(self, tear, command):
        """Send the committing command; return (answer or None, committed as the model sees it)."""
        if tear is None:
            answer = self.send(command)
            return answer, answer.ok
        self.card.tear_after(1, commit=tear == "after")
        try:
            self.card.transmit(command)
        except CardTorn as torn:
            return None, torn.committed
        raise AssertionError("armed tear did not happen")

    @rule(amount=st.integers(0, BALANCE_MAX), tear=TEARS)
    def load(self, amount, tear):
        self.select()
        init = A.InitializeForLoad(1, amount, TERMINAL)
        answer = self.send(init.to_bytes())
        if self.balance + amount > BALANCE_MAX:
            assert answer.sw == A.StatusWord.BALANCE_CEILING_EXCEEDED
            return
        assert answer.ok
        result = A.InitializeForLoadResponse.from_bytes(answer.data)
        assert (result.balance_fen, result.online_counter) == (self.balance, self.online)
        load = LoadTransaction.from_initialize(ASN, init, result)
        self.issuer.verify_load_mac1(load, result.mac1)
        credit = self.issuer.credit_for_load(load, DATE, TIME)
        answer, committed = self._maybe_tear(tear, credit.to_bytes())
        assert committed == (tear != "before")
        if answer is not None:
            self.issuer.verify_load_tac(load, DATE, TIME, answer.data)
        if committed:
            self.loads[self.online] = load
            self.balance += amount
            self.online += 1

    @rule(amount=st.integers(0, BALANCE_MAX), tear=TEARS, compound=st.booleans())
    def purchase(self, amount, tear, compound):
        self.select()
        init = A.InitializeForPurchase(1, amount, TERMINAL, compound)
        answer = self.send(init.to_bytes())
        if amount > self.balance:
            assert answer.sw == A.StatusWord.INSUFFICIENT_BALANCE
            return
        result = A.InitializeForPurchaseResponse.from_bytes(answer.data)
        assert (result.balance_fen, result.offline_counter) == (self.balance, self.offline)
        sam = self.sam.begin_purchase(
            asn=ASN,
            card_random=result.random,
            offline_counter=result.offline_counter,
            amount_fen=amount,
            tx_type=init.tx_type,
            terminal_id=TERMINAL,
            date=DATE,
            time=TIME,
        )
        debit = A.DebitForPurchase(sam.terminal_serial, DATE, TIME, sam.mac1)
        answer, committed = self._maybe_tear(tear, debit.to_bytes())
        assert committed == (tear != "before")
        purchase = PurchaseTransaction(
            ASN, amount, init.tx_type, TERMINAL, sam.terminal_serial, DATE, TIME
        )
        if answer is not None:
            reply = A.DebitForPurchaseResponse.from_bytes(answer.data)
            self.sam.verify_mac2(sam, reply.mac2)
            self.issuer.verify_purchase_tac(purchase, reply.tac)
        if committed:
            self.purchases[self.offline] = purchase
            self.balance -= amount
            self.offline += 1

    @rule(amount=st.integers(1, 100))
    def credit_with_a_bad_mac2(self, amount):
        self.select()
        init = A.InitializeForLoad(1, amount, TERMINAL)
        if not self.send(init.to_bytes()).ok:
            return
        answer = self.send(A.CreditForLoad(DATE, TIME, b"\0\0\0\0").to_bytes())
        assert answer.sw == A.StatusWord.MAC_INVALID

    @rule()
    def restart(self):
        self.card = SoftwareCard.from_json(self.card.to_json(), random=self.random)

    @invariant()
    def balance_and_counters_match(self):
        self.select()
        answer = self.send(A.GetBalance().to_bytes())
        assert A.GetBalanceResponse.from_bytes(answer.data).balance_fen == self.balance
        assert (self.card.online_counter, self.card.offline_counter) == (self.online, self.offline)

    @invariant()
    def proofs_answer_exactly_for_committed_transactions(self):
        self.select()
        for counter in range(self.online_start, self.online + 1):
            answer = self.send(A.GetTransactionProve(A.TX_TYPE_LOAD, counter).to_bytes())
            kept = counter in self.loads and counter >= self.online - proof_count_max
            if not kept:
                assert answer.sw == A.StatusWord.NO_TRANSACTION_PROOF
                continue
            proof = A.GetTransactionProveResponse.from_bytes(answer.data)
            self.issuer.verify_load_proof(self.loads[counter], DATE, TIME, proof.mac2, proof.tac)
        for counter in range(self.offline_start, self.offline + 1):
            purchase = self.purchases.get(counter)
            tx_type = purchase.tx_type if purchase else A.TX_TYPE_PURCHASE
            answer = self.send(A.GetTransactionProve(tx_type, counter).to_bytes())
            if purchase is None or counter < self.offline - proof_count_max:
                assert answer.sw == A.StatusWord.NO_TRANSACTION_PROOF
                continue
            proof = A.GetTransactionProveResponse.from_bytes(answer.data)
            self.issuer.verify_purchase_tac(purchase, proof.tac)


CardMachine.TestCase.settings = settings(stateful_step_count=25)
TestCardMachine = CardMachine.TestCase
