// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {EnumerableSet} from "@openzeppelin/contracts/utils/structs/EnumerableSet.sol";

/// @title FLB audit trail, version 5: the run's rules, who may take part, their data uploads, and every round in
/// order.
/// @notice Stored: the run's anchors (adapter config and run spec digests, and whether rounds are buffered, set
/// once); the registered clients; each client's data digests; each user's cumulative score; and per round two words,
/// the global adapter digest and a hash of the round's record (the full record is in the round's event). Every update
/// digest and data digest is accepted only with the client's own EIP-712 signature (domain "FLB", version "5", this
/// chain and this contract), so the owner cannot attribute to a client an update it did not send, and nobody
/// else can claim a client's data. Rounds are chained: round n is recorded only after round n-1, and
/// each client signs the global digest its update started from, read here, not chosen by the owner. In a buffered
/// (asynchronous, FedBuff) run a round's update may have started from an older round, at most maxStaleness rounds
/// before the previous one; each client's start rounds strictly increase, so no signed update counts twice.
/// docs/audit-spec.md specifies every digest, schema and event for an outsider's own verifier.
contract FLB is Ownable2Step, EIP712 {
    using EnumerableSet for EnumerableSet.AddressSet;

    /// @dev One word per user (a client that uploaded or was credited), so a first upload or credit
    /// writes one new slot besides the user list: its place in `_users` (1-based, 0 = not a user),
    /// how many data digests it has, and its cumulative score.
    struct User {
        uint32 position;
        uint32 dataCount;
        uint192 score;
    }

    struct Round {
        bytes32 globalDigest;
        bytes32 recordHash;
    }

    bytes32 private constant UPDATE_TYPEHASH =
        keccak256("Update(uint256 round,bytes32 previousGlobalDigest,bytes32 updateDigest,uint256 numExamples)");
    bytes32 private constant DATA_UPLOAD_TYPEHASH = keccak256("DataUpload(bytes32 dataDigest)");

    EnumerableSet.AddressSet private _clients;
    address[] private _users;
    mapping(address => User) private _userOf;
    mapping(address => mapping(uint256 => bytes32)) private _userData;
    mapping(address => mapping(bytes32 => bool)) private _uploaded;
    mapping(uint256 => Round) private _rounds;
    /// @dev Buffered runs only: per client, the least round its next update may start from (its last start + 1).
    mapping(address => uint256) private _nextStart;

    /// @notice The round the next recordRound, recordBufferedRound or recordSealedRound must carry.
    uint256 public nextRound;
    /// @notice The global digest of the last recorded round (0x0 before round 0).
    bytes32 public lastGlobalDigest;
    /// @notice sha256 of the run's canonical adapter_config.json (LoRA rank, alpha, target modules...): the
    /// tensors' digests say nothing of how they are scaled, so the config every adapter file carries is
    /// anchored too. Set once by the owner, with runSpecDigest (0x0 until then).
    bytes32 public adapterConfigDigest;
    /// @notice sha256 of the run's spec (strategy and its parameters, LoRA aggregation, DP settings, scoring,
    /// client sampling), so no later edit of the run's files can change the rules a verifier checks it by.
    bytes32 public runSpecDigest;
    /// @notice Whether rounds are buffered (asynchronous: recordBufferedRound), anchored with runSpecDigest.
    bool public buffered;
    /// @notice In a buffered run, the most rounds an update's start may lie before the previous round (0 otherwise).
    uint256 public maxStaleness;

    event RunAnchored(bytes32 adapterConfigDigest, bytes32 runSpecDigest, bool buffered, uint256 maxStaleness);
    /// @dev `round` is nextRound when the client was registered: 0 for a client registered before the run began.
    event ClientRegistered(address indexed client, uint256 round);
    event DataUpload(address indexed user, bytes32 dataDigest);
    event ScoreAdd(address indexed user, uint256 indexed round, uint256 score);
    event RoundRecorded(
        uint256 indexed round,
        bytes32 previousGlobalDigest,
        bytes32 globalDigest,
        bytes32 metricsDigest,
        address[] clients,
        bytes32[] updateDigests,
        uint256[] numExamples,
        uint256[] scores
    );
    /// @dev `startRounds[i]`: the round whose global adapter clients[i]'s update started from (it signed round
    /// startRounds[i] + 1 and that round's global digest).
    event BufferedRoundRecorded(
        uint256 indexed round,
        bytes32 previousGlobalDigest,
        bytes32 globalDigest,
        bytes32 metricsDigest,
        address[] clients,
        uint256[] startRounds,
        bytes32[] updateDigests,
        uint256[] numExamples,
        uint256[] scores
    );
    event RoundSealed(
        uint256 indexed round,
        bytes32 previousGlobalDigest,
        bytes32 globalDigest,
        bytes32 metricsDigest,
        bytes32 participantsCommitment
    );

    error ZeroAddress();
    error AlreadyRegistered(address client);
    error NotRegistered(address client);
    error ZeroDigest();
    error AlreadyUploaded(address client, bytes32 dataDigest);
    error BadSignature(address client);
    error WrongRound(uint256 expected, uint256 given);
    error LengthMismatch();
    error ClientsNotAscending(uint256 index);
    error RenounceDisabled();
    error AlreadyAnchored(bytes32 adapterConfigDigest, bytes32 runSpecDigest);
    error StalenessWithoutBuffer(uint256 maxStaleness);
    error NotBuffered();
    error NotSynchronous();
    error TooStale(address client, uint256 startRound);
    error StartReused(address client, uint256 startRound);

    constructor(address initialOwner) Ownable(initialOwner) EIP712("FLB", "5") {}

    /// @notice Ownership moves only by transferOwnership + acceptOwnership; an ownerless trail
    /// could record no further round, so renouncing always reverts.
    function renounceOwnership() public pure override {
        revert RenounceDisabled();
    }

    /// @notice Anchor the run's adapter config and run spec digests (once, neither zero), and whether its rounds are
    /// buffered, with the most rounds an update's start may lie before the previous round (0 when not buffered).
    function anchorRun(bytes32 adapterConfig, bytes32 runSpec, bool isBuffered, uint256 maxStale)
        external
        onlyOwner
    {
        if (adapterConfig == 0 || runSpec == 0) revert ZeroDigest();
        if (adapterConfigDigest != 0) revert AlreadyAnchored(adapterConfigDigest, runSpecDigest);
        if (!isBuffered && maxStale != 0) revert StalenessWithoutBuffer(maxStale);
        adapterConfigDigest = adapterConfig;
        runSpecDigest = runSpec;
        if (isBuffered) {
            buffered = true;
            maxStaleness = maxStale;
        }
        emit RunAnchored(adapterConfig, runSpec, isBuffered, maxStale);
    }

    /// @notice Allow `clients` to upload data and take part in rounds; each address once, never zero.
    function registerClients(address[] calldata clients) external onlyOwner {
        for (uint256 i = 0; i < clients.length; ++i) {
            address client = clients[i];
            if (client == address(0)) revert ZeroAddress();
            if (!_clients.add(client)) revert AlreadyRegistered(client);
            emit ClientRegistered(client, nextRound);
        }
    }

    /// @notice Whether `account` is a registered client.
    function isClient(address account) external view returns (bool) {
        return _clients.contains(account);
    }

    /// @notice How many of `accounts` are registered clients (one call checks a whole registration batch).
    function countRegistered(address[] calldata accounts) external view returns (uint256 count) {
        for (uint256 i = 0; i < accounts.length; ++i) {
            if (_clients.contains(accounts[i])) ++count;
        }
    }

    /// @notice How many clients are registered.
    function clientCount() external view returns (uint256) {
        return _clients.length();
    }

    /// @notice The registered client at `index` (registration order), 0 <= index < clientCount().
    function clientAt(uint256 index) external view returns (address) {
        return _clients.at(index);
    }

    /// @notice Record each `dataDigests[i]` as `clients[i]`'s data (a batch, so that thousands of clients
    /// take a few transactions). Anyone may relay the call: each record goes to the client whose EIP-712
    /// signature over DataUpload(dataDigest) is given, and each digest is recorded once per client: another
    /// client holding the same digest cannot block this one's upload.
    function uploadUserData(address[] calldata clients, bytes32[] calldata dataDigests, bytes[] calldata signatures)
        external
    {
        if (dataDigests.length != clients.length || signatures.length != clients.length) revert LengthMismatch();
        for (uint256 i = 0; i < clients.length; ++i) {
            _upload(clients[i], dataDigests[i], signatures[i]);
        }
    }

    /// @notice Record round `round` (must equal nextRound) in one transaction: its global digest, the
    /// sha256 of its metrics (evaluation results), and per client its update digest and example count
    /// (each signed by that client over this round and the stored lastGlobalDigest) and the score
    /// credited to it. No clients is valid (round 0, the base model, and skipped rounds), and is the only form a
    /// buffered run records here.
    function recordRound(
        uint256 round,
        bytes32 globalDigest,
        bytes32 metricsDigest,
        address[] calldata clients,
        bytes32[] calldata updateDigests,
        uint256[] calldata numExamples,
        uint256[] calldata scores,
        bytes[] calldata signatures
    ) external onlyOwner {
        uint256 count = clients.length;
        if (
            updateDigests.length != count || numExamples.length != count || scores.length != count
                || signatures.length != count
        ) revert LengthMismatch();
        if (count != 0 && buffered) revert NotSynchronous();
        bytes32 previous = _checkNextRound(round, globalDigest);
        for (uint256 i = 0; i < count; ++i) {
            // Strictly ascending addresses are distinct without a storage or memory lookup per pair.
            if (i > 0 && clients[i] <= clients[i - 1]) revert ClientsNotAscending(i);
            if (updateDigests[i] == 0) revert ZeroDigest();
            _checkUpdate(clients[i], _updateHash(round, previous, updateDigests[i], numExamples[i]), signatures[i]);
            _credit(clients[i], round, scores[i]);
        }
        _storeRound(
            round, globalDigest, _recordHash(previous, metricsDigest, clients, updateDigests, numExamples, scores)
        );
        emit RoundRecorded(round, previous, globalDigest, metricsDigest, clients, updateDigests, numExamples, scores);
    }

    /// @notice Record buffered round `round` (must equal nextRound) of a buffered run in one transaction: as
    /// recordRound, but clients[i]'s update started from the global adapter of round startRounds[i], at most
    /// maxStaleness rounds before round - 1, and is signed over (startRounds[i] + 1, that round's stored global
    /// digest). A client's start rounds strictly increase over the run, so one signed update counts once.
    function recordBufferedRound(
        uint256 round,
        bytes32 globalDigest,
        bytes32 metricsDigest,
        address[] calldata clients,
        uint256[] calldata startRounds,
        bytes32[] calldata updateDigests,
        uint256[] calldata numExamples,
        uint256[] calldata scores,
        bytes[] calldata signatures
    ) external onlyOwner {
        if (!buffered) revert NotBuffered();
        uint256 count = clients.length;
        if (
            startRounds.length != count || updateDigests.length != count || numExamples.length != count
                || scores.length != count || signatures.length != count
        ) revert LengthMismatch();
        bytes32 previous = _checkNextRound(round, globalDigest);
        uint256 staleness = maxStaleness;
        for (uint256 i = 0; i < count; ++i) {
            address client = clients[i];
            if (i > 0 && client <= clients[i - 1]) revert ClientsNotAscending(i);
            if (updateDigests[i] == 0) revert ZeroDigest();
            uint256 start = startRounds[i];
            if (start >= round || round - 1 - start > staleness) revert TooStale(client, start);
            if (start < _nextStart[client]) revert StartReused(client, start);
            _nextStart[client] = start + 1;
            _checkUpdate(
                client,
                _updateHash(start + 1, _rounds[start].globalDigest, updateDigests[i], numExamples[i]),
                signatures[i]
            );
            _credit(client, round, scores[i]);
        }
        _storeRound(
            round,
            globalDigest,
            _bufferedHash(previous, metricsDigest, clients, startRounds, updateDigests, numExamples, scores)
        );
        emit BufferedRoundRecorded(
            round, previous, globalDigest, metricsDigest, clients, startRounds, updateDigests, numExamples, scores
        );
    }

    /// @notice Record round `round` (must equal nextRound) without publishing who took part: only a
    /// commitment to the participants (e.g. a salted hash kept by the owner). Credits no scores. Not in a buffered
    /// run, whose rounds must show each update's start round.
    function recordSealedRound(
        uint256 round,
        bytes32 globalDigest,
        bytes32 metricsDigest,
        bytes32 participantsCommitment
    ) external onlyOwner {
        if (participantsCommitment == 0) revert ZeroDigest();
        if (buffered) revert NotSynchronous();
        bytes32 previous = _checkNextRound(round, globalDigest);
        _storeRound(round, globalDigest, _sealedHash(previous, metricsDigest, participantsCommitment));
        emit RoundSealed(round, previous, globalDigest, metricsDigest, participantsCommitment);
    }

    /// @notice `user`'s cumulative score (0 for an unknown address).
    function getScore(address user) external view returns (uint256) {
        return _userOf[user].score;
    }

    /// @notice Every data digest recorded for `user`, in upload order.
    function getUserData(address user) external view returns (bytes32[] memory digests) {
        digests = new bytes32[](_userOf[user].dataCount);
        for (uint256 i = 0; i < digests.length; ++i) {
            digests[i] = _userData[user][i];
        }
    }

    /// @notice How many data digests are recorded for `user`.
    function getUserDataCount(address user) external view returns (uint256) {
        return _userOf[user].dataCount;
    }

    /// @notice How many users (clients that uploaded or were credited) there are.
    function getUserCount() external view returns (uint256) {
        return _users.length;
    }

    /// @notice The user at `index` with its cumulative score, 0 <= index < getUserCount().
    function getUserScore(uint256 index) external view returns (address user, uint256 score) {
        user = _users[index];
        score = _userOf[user].score;
    }

    /// @notice Whether `user` has uploaded data or been credited.
    function userExists(address user) external view returns (bool) {
        return _userOf[user].position != 0;
    }

    /// @notice Whether `dataDigest` is recorded for `client`.
    function hasUploaded(address client, bytes32 dataDigest) external view returns (bool) {
        return _uploaded[client][dataDigest];
    }

    /// @notice How many of the pairs (`clients[i]`, `dataDigests[i]`) are recorded uploads.
    function countUploaded(address[] calldata clients, bytes32[] calldata dataDigests)
        external
        view
        returns (uint256 count)
    {
        if (dataDigests.length != clients.length) revert LengthMismatch();
        for (uint256 i = 0; i < clients.length; ++i) {
            if (_uploaded[clients[i]][dataDigests[i]]) ++count;
        }
    }

    /// @notice A round's stored words; its record is in the RoundRecorded, BufferedRoundRecorded or RoundSealed event
    /// with this round.
    function getRound(uint256 round) external view returns (bytes32 globalDigest, bytes32 recordHash) {
        Round storage r = _rounds[round];
        return (r.globalDigest, r.recordHash);
    }

    /// @notice Whether `round` is recorded (rounds are recorded in order, so: round < nextRound).
    function roundExists(uint256 round) external view returns (bool) {
        return round < nextRound;
    }

    /// @notice True when the given record is exactly what recordRound stored for `round`.
    function verifyRound(
        uint256 round,
        bytes32 previousGlobalDigest,
        bytes32 globalDigest,
        bytes32 metricsDigest,
        address[] calldata clients,
        bytes32[] calldata updateDigests,
        uint256[] calldata numExamples,
        uint256[] calldata scores
    ) external view returns (bool) {
        return _isStored(
            round,
            globalDigest,
            _recordHash(previousGlobalDigest, metricsDigest, clients, updateDigests, numExamples, scores)
        );
    }

    /// @notice True when the given record is exactly what recordBufferedRound stored for `round`.
    function verifyBufferedRound(
        uint256 round,
        bytes32 previousGlobalDigest,
        bytes32 globalDigest,
        bytes32 metricsDigest,
        address[] calldata clients,
        uint256[] calldata startRounds,
        bytes32[] calldata updateDigests,
        uint256[] calldata numExamples,
        uint256[] calldata scores
    ) external view returns (bool) {
        return _isStored(
            round,
            globalDigest,
            _bufferedHash(previousGlobalDigest, metricsDigest, clients, startRounds, updateDigests, numExamples, scores)
        );
    }

    /// @notice True when the given record is exactly what recordSealedRound stored for `round`.
    function verifySealedRound(
        uint256 round,
        bytes32 previousGlobalDigest,
        bytes32 globalDigest,
        bytes32 metricsDigest,
        bytes32 participantsCommitment
    ) external view returns (bool) {
        return _isStored(round, globalDigest, _sealedHash(previousGlobalDigest, metricsDigest, participantsCommitment));
    }

    /// @notice The EIP-712 domain separator signatures are checked against.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice The EIP-712 digest a client signs for an Update; lets anyone check an off-chain signer.
    function updateHash(uint256 round, bytes32 previousGlobalDigest, bytes32 updateDigest, uint256 numExamples)
        external
        view
        returns (bytes32)
    {
        return _updateHash(round, previousGlobalDigest, updateDigest, numExamples);
    }

    /// @notice The EIP-712 digest a client signs for a DataUpload.
    function dataUploadHash(bytes32 dataDigest) external view returns (bytes32) {
        return _dataUploadHash(dataDigest);
    }

    function _checkNextRound(uint256 round, bytes32 globalDigest) private view returns (bytes32 previous) {
        if (round != nextRound) revert WrongRound(nextRound, round);
        if (globalDigest == 0) revert ZeroDigest();
        return lastGlobalDigest;
    }

    function _storeRound(uint256 round, bytes32 globalDigest, bytes32 recordHash) private {
        _rounds[round] = Round(globalDigest, recordHash);
        lastGlobalDigest = globalDigest;
        nextRound = round + 1;
    }

    function _isStored(uint256 round, bytes32 globalDigest, bytes32 recordHash) private view returns (bool) {
        Round storage r = _rounds[round];
        return round < nextRound && r.globalDigest == globalDigest && r.recordHash == recordHash;
    }

    function _checkUpdate(address client, bytes32 digest, bytes calldata signature) private view {
        if (!_clients.contains(client)) revert NotRegistered(client);
        _checkSignature(client, digest, signature);
    }

    /// @dev OpenZeppelin's recovery rejects malformed and malleable (high-s) signatures.
    function _upload(address client, bytes32 dataDigest, bytes calldata signature) private {
        if (dataDigest == 0) revert ZeroDigest();
        if (!_clients.contains(client)) revert NotRegistered(client);
        if (_uploaded[client][dataDigest]) revert AlreadyUploaded(client, dataDigest);
        _checkSignature(client, _dataUploadHash(dataDigest), signature);
        _uploaded[client][dataDigest] = true;
        User storage user = _enroll(client);
        _userData[client][user.dataCount++] = dataDigest;
        emit DataUpload(client, dataDigest);
    }

    function _checkSignature(address signer, bytes32 digest, bytes calldata signature) private pure {
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(digest, signature);
        if (err != ECDSA.RecoverError.NoError || recovered != signer) revert BadSignature(signer);
    }

    function _credit(address account, uint256 round, uint256 score) private {
        User storage user = _enroll(account);
        user.score = SafeCast.toUint192(user.score + score);
        emit ScoreAdd(account, round, score);
    }

    function _enroll(address account) private returns (User storage user) {
        user = _userOf[account];
        if (user.position == 0) {
            _users.push(account);
            user.position = SafeCast.toUint32(_users.length);
        }
    }

    function _updateHash(uint256 round, bytes32 previousGlobalDigest, bytes32 updateDigest, uint256 numExamples)
        private
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(
            keccak256(abi.encode(UPDATE_TYPEHASH, round, previousGlobalDigest, updateDigest, numExamples))
        );
    }

    function _dataUploadHash(bytes32 dataDigest) private view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(DATA_UPLOAD_TYPEHASH, dataDigest)));
    }

    function _recordHash(
        bytes32 previousGlobalDigest,
        bytes32 metricsDigest,
        address[] calldata clients,
        bytes32[] calldata updateDigests,
        uint256[] calldata numExamples,
        uint256[] calldata scores
    ) private pure returns (bytes32) {
        return keccak256(abi.encode(previousGlobalDigest, metricsDigest, clients, updateDigests, numExamples, scores));
    }

    function _bufferedHash(
        bytes32 previousGlobalDigest,
        bytes32 metricsDigest,
        address[] calldata clients,
        uint256[] calldata startRounds,
        bytes32[] calldata updateDigests,
        uint256[] calldata numExamples,
        uint256[] calldata scores
    ) private pure returns (bytes32) {
        return keccak256(
            abi.encode(previousGlobalDigest, metricsDigest, clients, startRounds, updateDigests, numExamples, scores)
        );
    }

    function _sealedHash(bytes32 previousGlobalDigest, bytes32 metricsDigest, bytes32 participantsCommitment)
        private
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(previousGlobalDigest, metricsDigest, participantsCommitment));
    }
}
